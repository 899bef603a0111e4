//! Queue mode: take messages from the spool when they are due, deliver them, and
//! record every outcome durably.
//!
//! A message just accepted is handed over with its content, so the hot path never
//! reads it back from disk (within `spool.memory_limit`); a message waiting for a retry
//! keeps only its small index entry in memory and is read back when due. Retries back
//! off exponentially with jitter up to `delivery.retry_max`; after
//! `delivery.max_queue_lifetime` the remaining recipients bounce (RFC 3464). Recipients
//! already delivered are never tried again.
//!
//! Two kinds of waiting are not back-off:
//! - Mail deferred because no upstream could take it (connections failing, breakers
//!   open) is *parked*: it waits for its back-off, or for the earliest probe while every
//!   breaker is open, and is released the moment a breaker closes again.
//! - An outcome the spool cannot record (its file system is full or failing) is kept in
//!   memory and written again every second; meanwhile no new delivery starts, so a
//!   message already delivered is never delivered again because its state was lost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use super::bounce::{FailedRecipient, bounce, status_of};
use super::failover::{RcptStatus, Reason, Report};
use super::{Deliverer, Progress, ProgressFuture};
use crate::accept::{Handoff, HandoffError, HandoffFuture};
use crate::config::Config;
use crate::message::{Message, QueueId};
use crate::proto::ReversePath;
use crate::spool::ctl::{self, Request};
use crate::spool::{DeliveryState, RcptState, Spool, SpoolError};

/// The shortest wait of a parked message, so a breaker that is about to admit a probe
/// does not make workers spin.
const PARKED_MIN_DELAY: Duration = Duration::from_millis(100);

/// Settings of the scheduler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our host name (bounces).
    pub hostname: String,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long a message may stay queued.
    pub lifetime: Duration,
    /// Deliveries at the same time.
    pub workers: usize,
    /// Content bytes kept in memory for queued messages.
    pub memory_limit: u64,
    /// Refuse new mail above this disk usage (percent).
    pub max_disk_usage: u8,
}

impl Settings {
    /// From the configuration: one worker per upstream connection allowed.
    pub fn from_config(config: &Config) -> Settings {
        let connections: usize = config.upstream.iter().map(|u| u.max_connections).sum();
        Settings {
            hostname: config.server.hostname.clone(),
            retry_base: config.delivery.retry_base,
            retry_max: config.delivery.retry_max,
            lifetime: config.delivery.max_queue_lifetime,
            workers: connections.clamp(1, 256),
            memory_limit: config.spool.memory_limit,
            max_disk_usage: config.spool.max_disk_usage,
        }
    }
}

struct Ready {
    id: QueueId,
    message: Option<Arc<Message>>,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Ready>,
    /// Waiting messages by due time; an entry whose time differs from `due` is stale.
    waiting: BinaryHeap<Reverse<(SystemTime, QueueId)>>,
    due: HashMap<QueueId, SystemTime>,
    /// Being delivered right now; a retry request for these is not queued twice.
    in_flight: HashSet<QueueId>,
    /// Deferred because no upstream could be used (failed as a whole, or breakers
    /// open): released as soon as a breaker closes, whatever their own back-off says.
    parked: HashSet<QueueId>,
}

/// A delivery outcome the spool could not record yet.
#[derive(Clone, Debug)]
enum Outcome {
    /// No recipient is pending: the message leaves the spool.
    Finished,
    /// Some recipients wait: the new state, and when to try them.
    Deferred {
        state: DeliveryState,
        next: SystemTime,
    },
}

/// Outcomes waiting to be written, and why the last write failed.
#[derive(Default)]
struct Unrecorded {
    outcomes: HashMap<QueueId, Outcome>,
    /// Whether the last failure was the file system being out of space (`452 4.3.1` to
    /// new mail) rather than another local fault (`451 4.3.0`).
    out_of_space: bool,
}

struct Inner {
    spool: Arc<Spool>,
    deliverer: Arc<Deliverer>,
    settings: Settings,
    queue: Mutex<Queue>,
    wake: Notify,
    stopping: AtomicBool,
    busy: AtomicUsize,
    cached_bytes: AtomicU64,
    disk_full: AtomicBool,
    /// Counts breaker recoveries, so a delivery that was under way when one happened
    /// knows that its "no upstream" is already out of date.
    recoveries: AtomicU64,
    /// Set while [`Inner::unrecorded`] holds outcomes: no delivery starts meanwhile.
    spool_failing: AtomicBool,
    unrecorded: Mutex<Unrecorded>,
}

/// The queue-mode delivery engine.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// Start the workers and the maintenance task; every message already in the spool
    /// is scheduled at its recorded time.
    pub fn start(spool: Arc<Spool>, deliverer: Arc<Deliverer>, settings: Settings) -> Scheduler {
        let workers = settings.workers;
        let inner = Arc::new(Inner {
            spool,
            deliverer,
            settings,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            cached_bytes: AtomicU64::new(0),
            disk_full: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
            spool_failing: AtomicBool::new(false),
            unrecorded: Mutex::new(Unrecorded::default()),
        });
        let scheduler = Scheduler { inner };
        for (id, entry) in scheduler.inner.spool.entries() {
            scheduler.schedule(
                id,
                UNIX_EPOCH + Duration::from_secs(entry.state.next_attempt),
            );
        }
        let this = scheduler.clone();
        tokio::spawn(async move {
            // Requests left while no relay ran come before any delivery: a message the
            // operator deleted meanwhile must not go out because it happened to be due.
            for request in ctl::take(this.inner.spool.dir()) {
                this.apply(request).await;
            }
            for _ in 0..workers {
                let worker = this.clone();
                tokio::spawn(async move { worker.work().await });
            }
            let releaser = this.clone();
            tokio::spawn(async move { releaser.release_parked().await });
            this.maintain().await
        });
        scheduler
    }

    /// Messages in the queue.
    pub fn queued(&self) -> usize {
        self.inner.spool.len()
    }

    /// Whether new mail can be spooled (for `/readyz`).
    pub fn ready(&self) -> Result<(), String> {
        if self.inner.spool_failing.load(Ordering::SeqCst) {
            let held = self.unrecorded().outcomes.len();
            return Err(format!(
                "the spool cannot record delivery outcomes ({held} kept in memory); deliveries paused"
            ));
        }
        if self.inner.disk_full.load(Ordering::SeqCst) {
            return Err(format!(
                "spool disk above spool.max_disk_usage ({} %)",
                self.inner.settings.max_disk_usage
            ));
        }
        Ok(())
    }

    /// Stop taking messages; wait up to `grace` for deliveries under way.
    pub async fn stop(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake.notify_waiters();
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.busy.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Last chance for outcomes the spool could not take; what still fails is
        // delivered again after the restart (at least once, never lost).
        if self.inner.spool_failing.load(Ordering::SeqCst) && !self.write_unrecorded().await {
            let held = self.unrecorded().outcomes.len();
            warn!(
                outcomes = held,
                "stopping with delivery outcomes the spool could not record: those messages will be delivered again after the restart"
            );
        }
        // Idle workers and the maintenance task notice within a second; wait for them so
        // the spool (and its lock) is released when this returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while Arc::strong_count(&self.inner) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Take over what a passthrough delivery left: `report` (for `message`'s recipients,
    /// in order) has some recipients delivered and the others deferred or refused. The
    /// refused ones get their DSN (queued and sent like any bounce), the deferred ones
    /// are spooled with the delivered ones marked done, and retried after the first
    /// back-off like queue-mode mail; an accepted recipient is never sent again.
    ///
    /// When this returns `Ok`, all of it is on disk (the DSN first, then the message),
    /// so the client may be told `250`. On error nothing of the message is queued
    /// (a DSN may be: at worst the sender hears of a refusal and the client retries).
    pub async fn adopt(&self, message: &Arc<Message>, report: &Report) -> Result<(), SpoolError> {
        let now = SystemTime::now();
        let mut state = DeliveryState::new(message.envelope.recipients.len());
        state.attempts = 1;
        let mut failed = Vec::new();
        for (index, (rcpt, status)) in report.recipients.iter().enumerate() {
            match status {
                RcptStatus::Delivered { .. } => state.rcpts[index] = RcptState::Delivered,
                RcptStatus::Failed(reason) => {
                    state.rcpts[index] = RcptState::Failed;
                    failed.push(failed_recipient(rcpt, reason, true));
                }
                RcptStatus::Deferred(reason) => state.last_error = reason.to_string(),
            }
        }
        if let Some(dsn) = bounce(message, &failed, &self.inner.settings.hostname, now) {
            let dsn_id = dsn.id;
            self.inner.spool.put(&dsn).await?;
            metrics::counter!(crate::telemetry::name::BOUNCED).increment(1);
            info!(queue_id = %message.id, bounce_id = %dsn_id, recipients = failed.len(), "passthrough: bounce queued to the sender for the refused recipients");
            self.enqueue(dsn_id, Some(Arc::new(dsn)));
        } else if !failed.is_empty() {
            info!(queue_id = %message.id, "failed recipients of a null-sender message are not bounced");
        }
        if state.is_complete() {
            return Ok(());
        }
        let delay = self.backoff(state.attempts);
        let next = now + delay;
        state.next_attempt = next.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 1;
        let pending = state
            .rcpts
            .iter()
            .filter(|r| **r == RcptState::Pending)
            .count();
        self.inner.spool.put_with_state(message, state).await?;
        info!(queue_id = %message.id, pending, retry_in = ?Duration::from_millis(delay.as_millis() as u64), "passthrough: the deferred recipients are queued and retried like queue-mode mail; the others are not sent again");
        self.schedule(message.id, next);
        Ok(())
    }

    /// Queue `id` for delivery now; with its content if memory allows.
    fn enqueue(&self, id: QueueId, message: Option<Arc<Message>>) {
        let message = message.filter(|m| {
            let len = m.content.len() as u64;
            let held = self.inner.cached_bytes.fetch_add(len, Ordering::SeqCst);
            if held + len > self.inner.settings.memory_limit {
                self.inner.cached_bytes.fetch_sub(len, Ordering::SeqCst);
                false
            } else {
                true
            }
        });
        let mut queue = self.inner.queue.lock().expect("queue lock");
        queue.due.remove(&id);
        queue.parked.remove(&id);
        queue.ready.push_back(Ready { id, message });
        drop(queue);
        self.inner.wake.notify_one();
    }

    /// Queue `id` for `at`.
    fn schedule(&self, id: QueueId, at: SystemTime) {
        let mut queue = self.inner.queue.lock().expect("queue lock");
        queue.due.insert(id, at);
        queue.waiting.push(Reverse((at, id)));
        drop(queue);
        self.inner.wake.notify_one();
    }

    /// The next message to deliver, or how long to sleep.
    fn next(&self) -> Result<Ready, Option<Duration>> {
        let mut queue = self.inner.queue.lock().expect("queue lock");
        if let Some(ready) = queue.ready.pop_front() {
            return Ok(ready);
        }
        let now = SystemTime::now();
        while let Some(Reverse((at, id))) = queue.waiting.peek().copied() {
            if queue.due.get(&id) != Some(&at) {
                queue.waiting.pop();
                continue;
            }
            if at > now {
                return Err(Some(at.duration_since(now).unwrap_or_default()));
            }
            queue.waiting.pop();
            queue.due.remove(&id);
            return Ok(Ready { id, message: None });
        }
        Err(None)
    }

    async fn work(&self) {
        loop {
            if self.inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            // While outcomes cannot be recorded, a new delivery could only add to them.
            if self.inner.spool_failing.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = self.inner.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            match self.next() {
                Ok(ready) => {
                    self.inner.busy.fetch_add(1, Ordering::SeqCst);
                    let cached = ready.message.as_ref().map_or(0, |m| m.content.len() as u64);
                    let id = ready.id;
                    self.inner
                        .queue
                        .lock()
                        .expect("queue lock")
                        .in_flight
                        .insert(id);
                    self.deliver(ready).await;
                    self.inner
                        .queue
                        .lock()
                        .expect("queue lock")
                        .in_flight
                        .remove(&id);
                    self.inner.cached_bytes.fetch_sub(cached, Ordering::SeqCst);
                    self.inner.busy.fetch_sub(1, Ordering::SeqCst);
                }
                Err(wait) => {
                    let wait = wait
                        .unwrap_or(Duration::from_secs(1))
                        .min(Duration::from_secs(1));
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One delivery attempt of one message, and its durable outcome.
    async fn deliver(&self, ready: Ready) {
        let spool = &self.inner.spool;
        let Some(entry) = spool.entry(ready.id) else {
            return;
        };
        if self.unrecorded().outcomes.contains_key(&ready.id) {
            // Its last outcome is not on disk yet; the spool's entry is out of date.
            info!(queue_id = %ready.id, "not delivered again: its last outcome is waiting to be recorded");
            return;
        }
        let message = match ready.message {
            Some(m) => m,
            None => {
                let (spool, id) = (spool.clone(), ready.id);
                match tokio::task::spawn_blocking(move || spool.load(id)).await {
                    Ok(Ok(m)) => Arc::new(m),
                    Ok(Err(e)) => {
                        error!(queue_id = %ready.id, error = %e, "cannot read a queued message; retrying later");
                        self.schedule(ready.id, SystemTime::now() + self.inner.settings.retry_max);
                        return;
                    }
                    Err(e) => {
                        error!(queue_id = %ready.id, error = %e, "spool read task failed");
                        return;
                    }
                }
            }
        };
        let pending: Vec<usize> = (0..entry.state.rcpts.len())
            .filter(|i| entry.state.rcpts[*i] == RcptState::Pending)
            .collect();
        // Only the pending recipients are tried; when that is all of them the message
        // goes as it is, without a copy.
        let attempt = if pending.len() == entry.envelope.recipients.len() {
            message.clone()
        } else {
            let mut partial = (*message).clone();
            partial.envelope.recipients = pending
                .iter()
                .map(|i| entry.envelope.recipients[*i].clone())
                .collect();
            Arc::new(partial)
        };
        let recoveries = self.inner.recoveries.load(Ordering::SeqCst);
        let progress = Recorder {
            spool: spool.clone(),
            id: ready.id,
            pending: &pending,
            state: Mutex::new(entry.state.clone()),
        };
        let report = self
            .inner
            .deliverer
            .deliver_tracked(attempt, &progress)
            .await;

        let now = SystemTime::now();
        let mut state = entry.state.clone();
        // Held by a budget or skipped by open breakers: waiting, not trying.
        let waited = report.held_until.is_some() || report.breakers_open_until.is_some();
        if report.attempted || !waited {
            state.attempts += 1;
        }
        let mut failed = Vec::new();
        for (index, (rcpt, status)) in pending.iter().zip(&report.recipients) {
            match status {
                RcptStatus::Delivered { .. } => state.rcpts[*index] = RcptState::Delivered,
                RcptStatus::Failed(reason) => {
                    state.rcpts[*index] = RcptState::Failed;
                    failed.push(failed_recipient(rcpt, reason, true));
                }
                RcptStatus::Deferred(reason) => state.last_error = reason.to_string(),
            }
        }
        let age = now.duration_since(entry.received_at).unwrap_or_default();
        if !state.is_complete() && age >= self.inner.settings.lifetime {
            for (index, (rcpt, status)) in pending.iter().zip(&report.recipients) {
                if let RcptStatus::Deferred(reason) = status {
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
            warn!(queue_id = %message.id, attempts = state.attempts, "expired: max_queue_lifetime reached, bouncing the remaining recipients");
        }
        if !failed.is_empty()
            && let Some(dsn) = bounce(&message, &failed, &self.inner.settings.hostname, now)
        {
            let dsn_id = dsn.id;
            match spool.put(&dsn).await {
                Ok(()) => {
                    metrics::counter!(crate::telemetry::name::BOUNCED).increment(1);
                    info!(queue_id = %message.id, bounce_id = %dsn_id, recipients = failed.len(), "bounce queued to the sender");
                    self.enqueue(dsn_id, Some(Arc::new(dsn)));
                }
                Err(e) => {
                    // Without its bounce, a failure must not be recorded: the sender would
                    // never hear of it. Those recipients stay pending and are tried again.
                    for index in &pending {
                        if state.rcpts[*index] == RcptState::Failed {
                            state.rcpts[*index] = RcptState::Pending;
                        }
                    }
                    error!(queue_id = %message.id, error = %e, "cannot queue the bounce; the failed recipients stay queued and are tried again later");
                }
            }
        } else if !failed.is_empty() && message.envelope.sender == ReversePath::Null {
            info!(queue_id = %message.id, "failed recipients of a null-sender message are not bounced");
        }

        let outcome = if state.is_complete() {
            Outcome::Finished
        } else {
            let parked_until = report.breakers_open_until;
            let waits_for_upstream = report.waiting_for_upstream || parked_until.is_some();
            let recovered_meanwhile = self.inner.recoveries.load(Ordering::SeqCst) != recoveries;
            let delay = match (report.held_until, parked_until) {
                // A breaker closed while this attempt found none usable: try again now.
                _ if waits_for_upstream && recovered_meanwhile => Duration::ZERO,
                (Some(until), _) if !report.attempted => {
                    until.duration_since(now).unwrap_or_default()
                }
                // Waiting for the upstream, not for its own turn: try at the next probe
                // (or at once when the breaker closes, see `release_parked`).
                (_, Some(until)) => until
                    .duration_since(now)
                    .unwrap_or_default()
                    .clamp(PARKED_MIN_DELAY, self.inner.settings.retry_max),
                _ => self.backoff(state.attempts),
            };
            let next = now + delay;
            state.next_attempt = next.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 1;
            let parked = if waits_for_upstream {
                self.inner
                    .queue
                    .lock()
                    .expect("queue lock")
                    .parked
                    .insert(message.id);
                "until an upstream's circuit breaker closes"
            } else {
                "back-off"
            };
            info!(queue_id = %message.id, attempts = state.attempts, retry_in = ?Duration::from_millis(delay.as_millis() as u64), waiting = parked, reason = %state.last_error, "deferred");
            Outcome::Deferred { state, next }
        };
        if let Err(e) = self.record(message.id, &outcome).await {
            self.keep_unrecorded(message.id, outcome, &e);
        }
    }

    /// Write `outcome` to the spool; a deferred message is scheduled once it is written.
    async fn record(&self, id: QueueId, outcome: &Outcome) -> Result<(), SpoolError> {
        match outcome {
            Outcome::Finished => self.inner.spool.remove(id).await,
            Outcome::Deferred { state, next } => {
                self.inner.spool.update(id, state.clone()).await?;
                self.schedule(id, *next);
                Ok(())
            }
        }
    }

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, Unrecorded> {
        self.inner
            .unrecorded
            .lock()
            .expect("unrecorded outcomes lock")
    }

    /// The spool refused `outcome`: hold it in memory and pause deliveries until it is
    /// written (see `write_unrecorded`).
    fn keep_unrecorded(&self, id: QueueId, outcome: Outcome, error: &SpoolError) {
        let mut unrecorded = self.unrecorded();
        unrecorded.outcomes.insert(id, outcome);
        unrecorded.out_of_space = error.is_out_of_space();
        let held = unrecorded.outcomes.len();
        drop(unrecorded);
        if !self.inner.spool_failing.swap(true, Ordering::SeqCst) {
            error!(queue_id = %id, error = %error, "the spool cannot record delivery outcomes: they are kept in memory and written again every second; no new delivery starts and new mail is refused until then (free space in spool.dir, or fix the error)");
        } else {
            warn!(queue_id = %id, error = %error, outcomes = held, "delivery outcome kept in memory: the spool still cannot record it");
        }
    }

    /// Write the outcomes held in memory. Returns true when none is left, and then
    /// lets deliveries start again.
    async fn write_unrecorded(&self) -> bool {
        let held: Vec<(QueueId, Outcome)> = self
            .unrecorded()
            .outcomes
            .iter()
            .map(|(id, o)| (*id, o.clone()))
            .collect();
        for (id, outcome) in &held {
            if self.inner.spool.entry(*id).is_none() {
                // Deleted by the operator meanwhile.
                self.unrecorded().outcomes.remove(id);
                continue;
            }
            if let Err(e) = self.record(*id, outcome).await {
                self.unrecorded().out_of_space = e.is_out_of_space();
                return false;
            }
            self.unrecorded().outcomes.remove(id);
        }
        let mut unrecorded = self.unrecorded();
        if !unrecorded.outcomes.is_empty() {
            return false;
        }
        unrecorded.out_of_space = false;
        drop(unrecorded);
        if self.inner.spool_failing.swap(false, Ordering::SeqCst) {
            info!(
                outcomes = held.len(),
                "the spool records delivery outcomes again: held outcomes written, deliveries and new mail resume"
            );
            self.inner.wake.notify_waiters();
        }
        true
    }

    /// Whenever an upstream's breaker closes, send the mail parked for it now.
    async fn release_parked(&self) {
        let recoveries = self.inner.deliverer.recoveries();
        while !self.inner.stopping.load(Ordering::SeqCst) {
            tokio::select! {
                _ = recoveries.notified() => {}
                // Only to notice `stopping`.
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
            self.inner.recoveries.fetch_add(1, Ordering::SeqCst);
            let released: Vec<QueueId> = {
                let mut queue = self.inner.queue.lock().expect("queue lock");
                let parked = std::mem::take(&mut queue.parked);
                parked
                    .into_iter()
                    .filter(|id| queue.due.contains_key(id) && !queue.in_flight.contains(id))
                    .collect()
            };
            if !released.is_empty() {
                info!(
                    messages = released.len(),
                    "an upstream works again: sending the mail that waited for it"
                );
            }
            for id in released {
                self.enqueue(id, None);
            }
        }
    }

    /// `retry_base · 2^(attempts-1)`, capped at `retry_max`, ±20 % jitter so retries
    /// of a burst do not arrive together.
    fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.inner.settings;
        let exp = attempts.saturating_sub(1).min(20);
        let base = s.retry_base.saturating_mul(1 << exp).min(s.retry_max);
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter).min(s.retry_max)
    }

    /// Every second: operator requests, disk usage, segment clean-up.
    async fn maintain(&self) {
        let mut ticks: u64 = 0;
        while !self.inner.stopping.load(Ordering::SeqCst) {
            if self.inner.spool_failing.load(Ordering::SeqCst) {
                self.write_unrecorded().await;
            }
            for request in ctl::take(self.inner.spool.dir()) {
                self.apply(request).await;
            }
            {
                use crate::telemetry::name;
                metrics::gauge!(name::QUEUE).set(self.inner.spool.len() as f64);
                let oldest = self
                    .inner
                    .spool
                    .oldest()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                metrics::gauge!(name::QUEUE_OLDEST).set(oldest.map_or(0.0, |d| d.as_secs_f64()));
            }
            if ticks.is_multiple_of(5) {
                let usage = disk_usage_percent(self.inner.spool.dir());
                let full = usage.is_some_and(|u| u > self.inner.settings.max_disk_usage);
                if full != self.inner.disk_full.swap(full, Ordering::SeqCst) {
                    if full {
                        warn!(usage = ?usage, limit = self.inner.settings.max_disk_usage, "spool disk above spool.max_disk_usage: refusing new mail with 452 4.3.1");
                    } else {
                        info!(usage = ?usage, "spool disk usage back below the limit: accepting mail");
                    }
                }
            }
            if let Err(e) = self.inner.spool.maintain(Duration::from_secs(600)).await {
                error!(error = %e, "spool maintenance failed");
            }
            ticks += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn apply(&self, request: Request) {
        match request {
            Request::Retry(id)
                if self
                    .inner
                    .queue
                    .lock()
                    .expect("queue lock")
                    .in_flight
                    .contains(&id) =>
            {
                info!(queue_id = %id, "retry requested for a message being delivered right now; nothing to do");
            }
            Request::Retry(id) if self.inner.spool.entry(id).is_some() => {
                info!(queue_id = %id, "retry requested");
                self.enqueue(id, None);
            }
            Request::RetryAll => {
                let ids: Vec<QueueId> = self
                    .inner
                    .queue
                    .lock()
                    .expect("queue lock")
                    .due
                    .keys()
                    .copied()
                    .collect();
                info!(
                    messages = ids.len(),
                    "retry of all waiting messages requested"
                );
                for id in ids {
                    self.enqueue(id, None);
                }
            }
            Request::Delete(id) if self.inner.spool.entry(id).is_some() => {
                self.inner.queue.lock().expect("queue lock").due.remove(&id);
                match self.inner.spool.remove(id).await {
                    Ok(()) => {
                        self.unrecorded().outcomes.remove(&id);
                        info!(queue_id = %id, "deleted from the queue by the operator")
                    }
                    Err(e) => error!(queue_id = %id, error = %e, "cannot delete"),
                }
            }
            Request::Retry(id) | Request::Delete(id) => {
                warn!(queue_id = %id, "queue request for a message that is not queued")
            }
        }
    }
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

fn failed_recipient(
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

/// Percent of the file system holding `dir` that is in use, if it can be read.
fn disk_usage_percent(dir: &std::path::Path) -> Option<u8> {
    // As `df` counts: blocks in use against blocks in use plus those available to
    // unprivileged users (the root reserve is neither).
    let stat = rustix::fs::statvfs(dir).ok()?;
    let used = stat.f_blocks.saturating_sub(stat.f_bfree);
    let usable = used + stat.f_bavail;
    if usable == 0 {
        return None;
    }
    Some((used * 100).div_ceil(usable).min(100) as u8)
}

impl Handoff for Scheduler {
    fn submit(&self, message: Message) -> HandoffFuture<'_> {
        Box::pin(async move {
            if self.inner.disk_full.load(Ordering::SeqCst) {
                return Err(HandoffError::NoStorage(format!(
                    "spool disk above spool.max_disk_usage ({} %)",
                    self.inner.settings.max_disk_usage
                )));
            }
            if self.inner.spool_failing.load(Ordering::SeqCst) {
                let detail = "the spool cannot record delivery outcomes".to_owned();
                return Err(if self.unrecorded().out_of_space {
                    HandoffError::NoStorage(detail)
                } else {
                    HandoffError::Unavailable(detail)
                });
            }
            self.inner.spool.put(&message).await.map_err(|e| {
                if e.is_out_of_space() {
                    HandoffError::NoStorage(e.to_string())
                } else {
                    HandoffError::Unavailable(e.to_string())
                }
            })?;
            let id = message.id;
            self.enqueue(id, Some(Arc::new(message)));
            Ok(())
        })
    }
}
