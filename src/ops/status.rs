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

/// The status page: self-contained HTML, CSS and script, with `status` in it so the
/// first view needs no second request; the page then refreshes itself from
/// `/api/status`.
pub fn page(status: &Status) -> String {
    const PAGE: &str = include_str!("status_page.html");
    let json = serde_json::to_string(status).expect("the status serializes");
    // Inside a <script> element `</script>` or `<!--` in a reply text would end or
    // confuse it; \u003c is the same character to the JSON parser.
    let json = json.replace('<', "\\u003c");
    PAGE.replacen("/*STATUS_JSON*/", &json, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::activity::{EventKind, MINUTES};

    #[test]
    fn the_page_carries_the_status_and_no_text_can_close_its_script() {
        let activity = Activity::default();
        activity.outcome(
            "0000000000000001",
            "a@example.net",
            EventKind::Deferred,
            Some("ses"),
            "451 </script><script>alert(1)</script> <!--",
        );
        let snapshot = activity.snapshot();
        let status = Status {
            generated_at: 1,
            hostname: "relay.test".into(),
            version: "0",
            started_at: 0,
            mode: "queue",
            upstreams: Vec::new(),
            queue: None,
            per_minute: snapshot.per_minute,
            events: snapshot.events,
        };
        let html = page(&status);
        assert!(!html.contains("/*STATUS_JSON*/"));
        assert_eq!(html.matches("</script>").count(), 2, "{html}");
        assert!(!html.contains("<!--"));
        let start = html.find("application/json\">").unwrap() + "application/json\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        let json: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(json["per_minute"].as_array().unwrap().len(), MINUTES);
        assert!(
            json["events"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("</script>")
        );
    }
}
