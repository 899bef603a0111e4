//! Each upstream as the status page shows it: its breaker, connections in use, the
//! last hour's outcomes, its last error and what its sending budget still allows.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::breaker::BreakerState;
use super::{Deliverer, UpstreamKind};

/// One upstream now.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamState {
    /// Its name.
    pub name: String,
    /// `smtp` or `maildir`.
    pub kind: &'static str,
    /// `up`, `open` (skipped after repeated failures) or `half-open` (one probe under way).
    pub state: &'static str,
    /// While open: when a probe may be tried (Unix time).
    pub probe_at: Option<u64>,
    /// Connections in use by deliveries.
    pub in_flight: usize,
    /// Its `max_connections` (SMTP only).
    pub max_connections: Option<usize>,
    /// Recipients delivered through it in the last hour.
    pub delivered_last_hour: u64,
    /// Recipients it deferred with its reply in the last hour.
    pub deferred_last_hour: u64,
    /// Its attempts that failed as a whole in the last hour (connection, TLS, AUTH, a
    /// timeout, a refused transaction).
    pub failed_attempts_last_hour: u64,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// When that was (Unix time).
    pub last_error_at: Option<u64>,
    /// How many more the next window of its `rate_limit` allows (none: no rate limit).
    pub rate_left: Option<u64>,
    /// What is left of today's `daily_limit` (none: no daily limit).
    pub daily_left: Option<u64>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Deliverer {
    /// Every upstream in force, in configuration order.
    pub fn upstream_states(&self) -> Vec<UpstreamState> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.current()
            .targets
            .iter()
            .map(|target| {
                let recent = self.activity().upstream(&target.name);
                let mut state = UpstreamState {
                    name: target.name.clone(),
                    kind: "maildir",
                    state: "up",
                    probe_at: None,
                    in_flight: 0,
                    max_connections: None,
                    delivered_last_hour: recent.delivered_last_hour,
                    deferred_last_hour: recent.deferred_last_hour,
                    failed_attempts_last_hour: recent.failed_attempts_last_hour,
                    last_error: None,
                    last_error_at: None,
                    rate_left: None,
                    daily_left: None,
                };
                let UpstreamKind::Smtp(up) = &target.kind else {
                    return state;
                };
                state.kind = "smtp";
                (state.state, state.probe_at) = match up.breaker.state() {
                    BreakerState::Closed { .. } => ("up", None),
                    BreakerState::Open { until, .. } => {
                        let wait = until.saturating_duration_since(now);
                        ("open", Some(unix(wall + wait)))
                    }
                    BreakerState::HalfOpen { .. } => ("half-open", None),
                };
                if state.state == "up" && up.shared_breaker.as_ref().is_some_and(|b| b.seen_open())
                {
                    state.state = "open";
                }
                state.in_flight = up.in_flight();
                state.max_connections = Some(up.max_connections());
                if let Some((at, error)) = up.last_error() {
                    state.last_error = Some(error);
                    state.last_error_at = Some(unix(at));
                }
                (state.rate_left, state.daily_left) = up.budget_left();
                state
            })
            .collect()
    }
}
