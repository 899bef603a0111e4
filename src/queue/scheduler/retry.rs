//! When a deferred message is tried again: exponential back-off with jitter for its own
//! failures, the sending budget's time when it was only held, and the next breaker
//! probe (parked, released early when a breaker closes) when no upstream could be used.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tracing::info;

use super::Scheduler;
use super::outcomes::Outcome;
use crate::deliver::failover::Report;
use crate::message::QueueId;
use crate::spool::DeliveryState;

/// The shortest wait of a parked message, so a breaker that is about to admit a probe
/// does not make workers spin.
const PARKED_MIN_DELAY: Duration = Duration::from_millis(100);

impl Scheduler {
    /// `retry_base · 2^(attempts-1)`, capped at `retry_max`, ±20 % jitter so retries
    /// of a burst do not arrive together.
    pub(super) fn backoff(&self, attempts: u32) -> Duration {
        let s = &self.inner.settings;
        let exp = attempts.saturating_sub(1).min(20);
        let base = s.retry_base.saturating_mul(1 << exp).min(s.retry_max);
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter).min(s.retry_max)
    }

    /// The outcome of an attempt that left recipients pending: `state` with its next
    /// attempt time. `recoveries` is the breaker recovery count when the attempt began.
    pub(super) fn defer(
        &self,
        id: QueueId,
        mut state: DeliveryState,
        report: &Report,
        recoveries: u64,
        now: SystemTime,
    ) -> Outcome {
        let parked_until = report.breakers_open_until;
        let waits_for_upstream = report.waiting_for_upstream || parked_until.is_some();
        let delay = match (report.held_until, parked_until) {
            (Some(until), _) if !report.attempted => until.duration_since(now).unwrap_or_default(),
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
        let waiting = if waits_for_upstream {
            "until an upstream's circuit breaker closes"
        } else {
            "back-off"
        };
        info!(queue_id = %id, attempts = state.attempts, retry_in = ?Duration::from_millis(delay.as_millis() as u64), waiting, reason = %state.last_error, "deferred");
        Outcome::Deferred {
            state,
            next,
            upstream_since: waits_for_upstream.then_some(recoveries),
        }
    }
}
