//! What the relay did lately, for the status page: messages per minute over the last
//! hour (received, delivered, deferred, bounced), the same per upstream, and the last
//! [`EVENTS`] message events. Memory is constant: a ring of [`MINUTES`] slots, a ring of
//! [`EVENTS`] events, and one ring per upstream name.
//!
//! Recipients are counted, not messages, for delivered, deferred and failed (as the
//! Prometheus counters do); received and bounced count messages.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::Serialize;

/// Minutes of history kept.
pub const MINUTES: usize = 60;
/// Message events kept.
pub const EVENTS: usize = 100;
/// Longest detail text kept per event (a reply from an upstream can be long).
const MAX_DETAIL: usize = 300;

/// Counts of one minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MinuteCounts {
    /// The minute, as Unix time in seconds (a multiple of 60).
    pub minute: u64,
    /// Messages accepted.
    pub received: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients deferred.
    pub deferred: u64,
    /// Recipients failed for good.
    pub failed: u64,
    /// Bounces generated.
    pub bounced: u64,
    /// Delivery attempts that failed as a whole (the next upstream was tried, or the
    /// message waits): connection, TLS, AUTH, a timeout, a refused transaction.
    pub failed_attempts: u64,
}

/// What happened to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Accepted from a client.
    Received,
    /// Delivered to one recipient.
    Delivered,
    /// Deferred for one recipient.
    Deferred,
    /// Failed for good for one recipient.
    Failed,
    /// A bounce was generated.
    Bounced,
}

/// One message event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Unix time in seconds.
    pub at: u64,
    /// The queue id.
    pub queue_id: String,
    /// What happened.
    pub kind: EventKind,
    /// The recipient, for delivery events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcpt: Option<String>,
    /// The upstream, for delivery events that reached one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The sender and count of recipients (received), or the reply or reason.
    pub detail: String,
}

/// One upstream's last hour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamActivity {
    /// Recipients delivered in the last hour.
    pub delivered_last_hour: u64,
    /// Recipients deferred in the last hour after this upstream answered.
    pub deferred_last_hour: u64,
    /// Its attempts that failed as a whole in the last hour.
    pub failed_attempts_last_hour: u64,
}

/// A ring of per-minute counts.
#[derive(Debug)]
struct Ring([MinuteCounts; MINUTES]);

impl Default for Ring {
    fn default() -> Ring {
        Ring([MinuteCounts::default(); MINUTES])
    }
}

impl Ring {
    /// The slot of `minute`, cleared if it held an older minute.
    fn slot(&mut self, minute: u64) -> &mut MinuteCounts {
        let slot = &mut self.0[(minute / 60) as usize % MINUTES];
        if slot.minute != minute {
            *slot = MinuteCounts {
                minute,
                ..MinuteCounts::default()
            };
        }
        slot
    }

    /// The last [`MINUTES`] minutes up to `now`, oldest first, zero where nothing happened.
    fn last_hour(&self, now: u64) -> Vec<MinuteCounts> {
        let current = minute_of(now);
        (0..MINUTES as u64)
            .rev()
            .map(|back| {
                let minute = current.saturating_sub(back * 60);
                let slot = self.0[(minute / 60) as usize % MINUTES];
                if slot.minute == minute {
                    slot
                } else {
                    MinuteCounts {
                        minute,
                        ..MinuteCounts::default()
                    }
                }
            })
            .collect()
    }
}

fn minute_of(secs: u64) -> u64 {
    secs - secs % 60
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The recorder every stage reports to; shared by the relay's stages.
#[derive(Debug, Default)]
pub struct Activity {
    totals: Mutex<Ring>,
    events: Mutex<VecDeque<Event>>,
    upstreams: DashMap<String, Ring>,
}

/// What the status page shows of the activity.
#[derive(Clone, Debug, Serialize)]
pub struct ActivitySnapshot {
    /// The last [`MINUTES`] minutes, oldest first.
    pub per_minute: Vec<MinuteCounts>,
    /// The last [`EVENTS`] events, newest first.
    pub events: Vec<Event>,
}

impl Activity {
    /// A message was accepted.
    pub fn received(&self, queue_id: &str, sender: &str, rcpts: usize) {
        let now = unix_now();
        self.record(now, |m| m.received += 1);
        self.push(Event {
            at: now,
            queue_id: queue_id.to_owned(),
            kind: EventKind::Received,
            rcpt: None,
            upstream: None,
            detail: format!("from {sender}, {rcpts} recipient(s)"),
        });
    }

    /// A recipient was delivered, deferred or failed; `upstream` is the one that
    /// answered, if any, and `detail` its reply or the reason.
    pub fn outcome(
        &self,
        queue_id: &str,
        rcpt: &str,
        kind: EventKind,
        upstream: Option<&str>,
        detail: &str,
    ) {
        let now = unix_now();
        let bump = |m: &mut MinuteCounts| match kind {
            EventKind::Delivered => m.delivered += 1,
            EventKind::Deferred => m.deferred += 1,
            EventKind::Failed => m.failed += 1,
            EventKind::Received => m.received += 1,
            EventKind::Bounced => m.bounced += 1,
        };
        self.record(now, bump);
        if let Some(name) = upstream {
            self.upstream_ring(name, |ring| bump(ring.slot(minute_of(now))));
        }
        self.push(Event {
            at: now,
            queue_id: queue_id.to_owned(),
            kind,
            rcpt: Some(rcpt.to_owned()),
            upstream: upstream.map(str::to_owned),
            detail: shorten(detail),
        });
    }

    /// An attempt on `upstream` failed as a whole.
    pub fn attempt_failed(&self, upstream: &str) {
        let now = unix_now();
        self.record(now, |m| m.failed_attempts += 1);
        self.upstream_ring(upstream, |ring| {
            ring.slot(minute_of(now)).failed_attempts += 1
        });
    }

    /// Change `upstream`'s ring, creating it the first time (the name is copied only then).
    fn upstream_ring(&self, upstream: &str, change: impl FnOnce(&mut Ring)) {
        if let Some(mut ring) = self.upstreams.get_mut(upstream) {
            return change(&mut ring);
        }
        change(&mut self.upstreams.entry(upstream.to_owned()).or_default());
    }

    /// A bounce was generated for the message.
    pub fn bounced(&self, queue_id: &str) {
        let now = unix_now();
        self.record(now, |m| m.bounced += 1);
        self.push(Event {
            at: now,
            queue_id: queue_id.to_owned(),
            kind: EventKind::Bounced,
            rcpt: None,
            upstream: None,
            detail: "delivery status notification sent to the sender".into(),
        });
    }

    /// The last hour and the last events.
    pub fn snapshot(&self) -> ActivitySnapshot {
        let now = unix_now();
        ActivitySnapshot {
            per_minute: self.totals.lock().expect("activity").last_hour(now),
            events: self
                .events
                .lock()
                .expect("activity")
                .iter()
                .rev()
                .cloned()
                .collect(),
        }
    }

    /// One upstream's last hour (zero for a name never seen).
    pub fn upstream(&self, name: &str) -> UpstreamActivity {
        let Some(ring) = self.upstreams.get(name) else {
            return UpstreamActivity::default();
        };
        let hour = ring.last_hour(unix_now());
        UpstreamActivity {
            delivered_last_hour: hour.iter().map(|m| m.delivered).sum(),
            deferred_last_hour: hour.iter().map(|m| m.deferred).sum(),
            failed_attempts_last_hour: hour.iter().map(|m| m.failed_attempts).sum(),
        }
    }

    fn record(&self, now: u64, bump: impl FnOnce(&mut MinuteCounts)) {
        bump(self.totals.lock().expect("activity").slot(minute_of(now)));
    }

    fn push(&self, event: Event) {
        let mut events = self.events.lock().expect("activity");
        if events.len() == EVENTS {
            events.pop_front();
        }
        events.push_back(event);
    }
}

/// At most [`MAX_DETAIL`] octets, cut at a character boundary.
fn shorten(text: &str) -> String {
    if text.len() <= MAX_DETAIL {
        return text.to_owned();
    }
    let mut end = MAX_DETAIL;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_one_hour_and_forgets_older_minutes() {
        let mut ring = Ring::default();
        let t0 = 1_800_000_020 - 1_800_000_020 % 60;
        ring.slot(t0).delivered += 2;
        ring.slot(t0 + 60).deferred += 1;
        let hour = ring.last_hour(t0 + 90);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour[MINUTES - 1].minute, t0 + 60);
        assert_eq!(hour[MINUTES - 1].deferred, 1);
        assert_eq!(hour[MINUTES - 2].delivered, 2);
        // An hour later the same slots hold new minutes; the old counts are gone.
        let later = t0 + 60 * MINUTES as u64;
        ring.slot(later).received += 1;
        let hour = ring.last_hour(later);
        assert_eq!(hour.iter().map(|m| m.delivered).sum::<u64>(), 0);
        assert_eq!(hour.iter().map(|m| m.deferred).sum::<u64>(), 1);
        assert_eq!(hour[MINUTES - 1].received, 1);
    }

    #[test]
    fn events_are_bounded_and_newest_first() {
        let activity = Activity::default();
        for i in 0..(EVENTS + 5) {
            activity.received(&format!("id{i}"), "a@example.com", 1);
        }
        let snap = activity.snapshot();
        assert_eq!(snap.events.len(), EVENTS);
        assert_eq!(snap.events[0].queue_id, format!("id{}", EVENTS + 4));
        assert_eq!(
            snap.per_minute.iter().map(|m| m.received).sum::<u64>(),
            (EVENTS + 5) as u64
        );
    }

    #[test]
    fn outcomes_count_per_upstream_and_long_details_are_cut() {
        let activity = Activity::default();
        activity.outcome(
            "q1",
            "a@x.test",
            EventKind::Delivered,
            Some("ses"),
            "250 ok",
        );
        activity.outcome(
            "q1",
            "b@x.test",
            EventKind::Deferred,
            Some("ses"),
            "451 later",
        );
        activity.outcome(
            "q2",
            "c@x.test",
            EventKind::Deferred,
            None,
            &"é".repeat(400),
        );
        activity.attempt_failed("ses");
        let ses = activity.upstream("ses");
        assert_eq!((ses.delivered_last_hour, ses.deferred_last_hour), (1, 1));
        assert_eq!(ses.failed_attempts_last_hour, 1);
        assert_eq!(activity.upstream("other"), UpstreamActivity::default());
        let snap = activity.snapshot();
        assert!(snap.events[0].detail.len() <= MAX_DETAIL + "…".len());
        let hour = &snap.per_minute;
        assert_eq!(hour.iter().map(|m| m.deferred).sum::<u64>(), 2);
    }
}
