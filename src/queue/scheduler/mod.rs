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
//!
//! This module is the run loop (workers, the ready and waiting queues, parking, the
//! hand-off from accept and passthrough); `attempt` is one delivery attempt of one
//! message, `retry` decides when a deferred message goes again, `outcomes` gets
//! outcomes onto the spool (or holds them while it cannot), `maintain` is the
//! housekeeping tick (operator requests, gauges, the disk guard), and `handover` runs
//! a `queue drain` request with every worker held at the delivery gate.

mod attempt;
mod handover;
mod maintain;
mod outcomes;
mod pacing;
mod retry;
mod summary;

pub use summary::{QueueSummary, deferral_kind};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::bounce::bounce;
use crate::config::Config;
use crate::deliver::Deliverer;
use crate::deliver::failover::Report;
use crate::message::{ContentMemory, Message, QueueId};
use crate::message::{Handoff, HandoffError, HandoffFuture};
use crate::spool::ctl;
use crate::spool::{DeliveryState, RcptState, Spool, SpoolError};
use outcomes::Unrecorded;

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
    /// Memory for message content (`spool.memory_limit`), shared with the sessions:
    /// accepted content is kept for its first delivery only while there is room.
    pub memory: Arc<ContentMemory>,
    /// Refuse new mail above this disk usage (percent).
    pub max_disk_usage: u8,
}

/// Delivery workers per upstream connection (see [`Settings::from_config`]).
const WORKERS_PER_CONNECTION: usize = 2;

impl Settings {
    /// From the configuration: two workers per upstream connection allowed, so that
    /// while one worker holds a connection for its transaction the other prepares (signs)
    /// the next message, and no connection waits for a signature.
    pub fn from_config(config: &Config) -> Settings {
        let connections: usize = config.upstream.iter().map(|u| u.max_connections).sum();
        let workers = connections.saturating_mul(WORKERS_PER_CONNECTION);
        Settings {
            hostname: config.server.hostname.clone(),
            retry_base: config.delivery.retry_base,
            retry_max: config.delivery.retry_max,
            lifetime: config.delivery.max_queue_lifetime,
            workers: workers.clamp(1, 512),
            memory: Arc::new(ContentMemory::new(config.spool.memory_limit)),
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
    /// Whether a due message goes before the next new one (see [`Scheduler::next`]).
    due_turn: bool,
}

impl Queue {
    /// `id` is due at `at` (replacing any earlier time: the heap entry for that one is
    /// stale and skipped by [`Queue::pop_due`]).
    fn set_due(&mut self, id: QueueId, at: SystemTime) {
        self.due.insert(id, at);
        self.waiting.push(Reverse((at, id)));
    }

    /// The earliest due message whose time has come (oldest first among equal times),
    /// or how long until the next one is due.
    fn pop_due(&mut self, now: SystemTime) -> Result<QueueId, Option<Duration>> {
        while let Some(Reverse((at, id))) = self.waiting.peek().copied() {
            if self.due.get(&id) != Some(&at) {
                self.waiting.pop();
                continue;
            }
            if at > now {
                return Err(Some(at.duration_since(now).unwrap_or_default()));
            }
            self.waiting.pop();
            self.due.remove(&id);
            return Ok(id);
        }
        Err(None)
    }
}

struct Inner {
    spool: Arc<Spool>,
    deliverer: Arc<Deliverer>,
    settings: Settings,
    queue: Mutex<Queue>,
    wake: Notify,
    stopping: AtomicBool,
    busy: AtomicUsize,
    disk_full: AtomicBool,
    /// Set while [`Inner::unrecorded`] holds outcomes: no delivery starts meanwhile.
    spool_failing: AtomicBool,
    unrecorded: Mutex<Unrecorded>,
    /// Notified each time a worker takes a ready message (see [`pacing`]).
    taken: Notify,
    /// Ready messages above which new mail is paced.
    pace_above: usize,
    /// The delivery gate: a worker holds it shared from taking a message to recording
    /// its outcome; a drain (`handover`) holds it exclusively, so no delivery starts
    /// while the queue is handed to another relay and none is under way when it begins.
    gate: tokio::sync::RwLock<()>,
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
            disk_full: AtomicBool::new(false),
            spool_failing: AtomicBool::new(false),
            unrecorded: Mutex::new(Unrecorded::default()),
            taken: Notify::new(),
            pace_above: pacing::pace_above(workers),
            gate: tokio::sync::RwLock::new(()),
        });
        let scheduler = Scheduler { inner };
        {
            let mut queue = scheduler.inner.queue.lock().expect("queue lock");
            for (id, at) in scheduler.inner.spool.due_times() {
                queue.set_due(id, at);
            }
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
        // Removals of finished messages are written lazily; make them durable now, so
        // a restart does not send those messages again.
        if let Err(e) = self.inner.spool.flush().await {
            warn!(error = %e, "cannot make the last delivery records durable: messages delivered just now may be delivered again after the restart. Check the spool disk: free space, or the I/O error named here");
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
        let all: Vec<usize> = (0..report.recipients.len()).collect();
        let failed = attempt::settle(&mut state, &all, report);
        if let Some(dsn) = bounce(message, &failed, &self.inner.settings.hostname, now) {
            let dsn_id = dsn.id;
            self.inner.spool.put(&dsn).await?;
            metrics::counter!(crate::telemetry::name::BOUNCED).increment(1);
            self.inner
                .deliverer
                .activity()
                .bounced(&message.id.to_string());
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
        let message =
            message.filter(|m| self.inner.settings.memory.try_take(m.content.len() as u64));
        let mut queue = self.inner.queue.lock().expect("queue lock");
        queue.due.remove(&id);
        queue.parked.remove(&id);
        queue.ready.push_back(Ready { id, message });
        drop(queue);
        self.inner.wake.notify_one();
    }

    /// Queue `id`, which found no usable upstream, for `at` (the next probe) and park it
    /// until a breaker closes. If one closed since its attempt began (the recovery count
    /// is no longer `seen`), it is due at once instead: the release may have come and
    /// gone while it was being tried. Checked under the queue lock, which the release
    /// also takes, so no recovery is missed.
    fn park(&self, id: QueueId, at: SystemTime, seen: u64) {
        let mut queue = self.inner.queue.lock().expect("queue lock");
        let at = if self.inner.deliverer.recoveries().count() == seen {
            queue.parked.insert(id);
            at
        } else {
            SystemTime::now()
        };
        queue.set_due(id, at);
        drop(queue);
        self.inner.wake.notify_one();
    }

    /// Queue `id` for `at`.
    fn schedule(&self, id: QueueId, at: SystemTime) {
        self.inner.queue.lock().expect("queue lock").set_due(id, at);
        self.inner.wake.notify_one();
    }

    /// Make `ids` due now, oldest first (queue ids grow with time), and wake every
    /// worker: a retry request, or the mail that waited for an upstream that works again.
    /// They take turns with new mail (see [`Scheduler::next`]).
    fn due_now(&self, ids: impl IntoIterator<Item = QueueId>) {
        let now = SystemTime::now();
        let mut queue = self.inner.queue.lock().expect("queue lock");
        for id in ids {
            queue.parked.remove(&id);
            queue.set_due(id, now);
        }
        drop(queue);
        self.inner.wake.notify_waiters();
    }

    /// The next message to deliver, or how long to sleep. New mail and mail that is due
    /// (retries, and a backlog released when an upstream works again) take turns, so
    /// neither starves the other: a backlog drains, oldest first, with at least half of
    /// the deliveries while new mail keeps coming, and new mail waits behind at most one
    /// due message per worker.
    fn next(&self) -> Result<Ready, Option<Duration>> {
        let mut queue = self.inner.queue.lock().expect("queue lock");
        if queue.due_turn || queue.ready.is_empty() {
            match queue.pop_due(SystemTime::now()) {
                Ok(id) => {
                    queue.due_turn = false;
                    return Ok(Ready { id, message: None });
                }
                Err(wait) if queue.ready.is_empty() => return Err(wait),
                Err(_) => {}
            }
        }
        let ready = queue.ready.pop_front().expect("not empty: checked above");
        queue.due_turn = true;
        drop(queue);
        self.inner.taken.notify_one();
        Ok(ready)
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
            let gate = self.inner.gate.read().await;
            if self.inner.stopping.load(Ordering::SeqCst) {
                return;
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
                    self.inner.settings.memory.give_back(cached);
                    self.inner.busy.fetch_sub(1, Ordering::SeqCst);
                    drop(gate);
                }
                Err(wait) => {
                    drop(gate);
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

    /// Whenever an upstream's breaker closes, send the mail parked for it now.
    async fn release_parked(&self) {
        let recoveries = self.inner.deliverer.recoveries();
        while !self.inner.stopping.load(Ordering::SeqCst) {
            tokio::select! {
                _ = recoveries.changed() => {}
                // Only to notice `stopping`.
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
            // A parked message without a due time is being tried right now; when that
            // attempt ends it sees the new recovery count and is due at once (`park`).
            let released: Vec<QueueId> = {
                let mut queue = self.inner.queue.lock().expect("queue lock");
                let parked = std::mem::take(&mut queue.parked);
                parked
                    .into_iter()
                    .filter(|id| queue.due.contains_key(id))
                    .collect()
            };
            if !released.is_empty() {
                info!(
                    messages = released.len(),
                    "an upstream works again: sending the mail that waited for it"
                );
            }
            self.due_now(released);
        }
    }
}

impl Handoff for Scheduler {
    fn body_dir(&self) -> Option<&std::path::Path> {
        Some(self.inner.spool.body_dir())
    }

    fn content_memory(&self) -> Option<&Arc<ContentMemory>> {
        Some(&self.inner.settings.memory)
    }

    fn activity(&self) -> Option<&Arc<crate::telemetry::activity::Activity>> {
        Some(self.inner.deliverer.activity())
    }

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
            self.pace().await;
            Ok(())
        })
    }
}
