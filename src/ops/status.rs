//! The relay's state for the status page and `GET /api/status`: every upstream, the
//! queue, messages per minute over the last hour and the last message events. Built on
//! request from what the stages keep anyway (breakers, pools, budgets, the spool index,
//! the [`Activity`] rings); nothing here holds a secret.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::deliver::{Deliverer, UpstreamState};
use crate::queue::{Passthrough, QueueSummary, Scheduler};
use crate::telemetry::activity::{Activity, Event, MinuteCounts};

/// The whole status, as `/api/status` serves it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// When it was taken (Unix time).
    pub generated_at: u64,
    /// `server.hostname`.
    pub hostname: String,
    /// The relay's version.
    pub version: &'static str,
    /// When the relay started (Unix time).
    pub started_at: u64,
    /// `queue` or `passthrough`.
    pub mode: &'static str,
    /// Every upstream, in configuration order.
    pub upstreams: Vec<UpstreamState>,
    /// The queue (none in passthrough mode without a spool).
    pub queue: Option<QueueSummary>,
    /// The last 60 minutes, oldest first: received, delivered, deferred, failed, bounced.
    pub per_minute: Vec<MinuteCounts>,
    /// The last 100 message events, newest first.
    pub events: Vec<Event>,
}

/// Where the status comes from: the running relay's stages.
#[derive(Clone)]
pub struct StatusSource {
    hostname: String,
    started_at: SystemTime,
    deliverer: Arc<Deliverer>,
    queue: Queue,
}

/// The queue of the relay's delivery mode.
#[derive(Clone)]
pub enum Queue {
    /// Queue mode: the scheduler.
    Spool(Scheduler),
    /// Passthrough mode: its spool for leftovers exists once something was left over.
    Passthrough(Arc<Passthrough>),
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl StatusSource {
    /// The status of a relay with these stages.
    pub fn new(hostname: String, deliverer: Arc<Deliverer>, queue: Queue) -> StatusSource {
        StatusSource {
            hostname,
            started_at: SystemTime::now(),
            deliverer,
            queue,
        }
    }

    /// The recent activity the stages record to.
    pub fn activity(&self) -> &Arc<Activity> {
        self.deliverer.activity()
    }

    /// The status now.
    pub fn status(&self) -> Status {
        let activity = self.activity().snapshot();
        Status {
            generated_at: unix(SystemTime::now()),
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: unix(self.started_at),
            mode: match self.queue {
                Queue::Spool(_) => "queue",
                Queue::Passthrough(_) => "passthrough",
            },
            upstreams: self.deliverer.upstream_states(),
            queue: match &self.queue {
                Queue::Spool(scheduler) => Some(scheduler.summary()),
                Queue::Passthrough(p) => p.running().map(Scheduler::summary),
            },
            per_minute: activity.per_minute,
            events: activity.events,
        }
    }
}
