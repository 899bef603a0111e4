//! Per-upstream circuit breaker: after repeated upstream-level failures the upstream is
//! skipped for a cool-down, then one probe decides whether it is back. It recovers by
//! itself; nobody has to re-enable an account by hand.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Healthy; counting consecutive failures.
    Closed {
        /// Consecutive upstream-level failures so far.
        failures: u32,
    },
    /// Skipped until `until`.
    Open {
        /// When a probe may be tried.
        until: Instant,
        /// The cool-down that led here; the next one doubles it.
        cooldown: Duration,
    },
    /// One probe is under way; everyone else still skips the upstream.
    HalfOpen {
        /// When the probe started (a probe that never reports is forgotten after a while).
        since: Instant,
        /// The cool-down to double if the probe fails.
        cooldown: Duration,
    },
}

/// Whether to use the upstream now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead: this attempt is the probe after a cool-down.
    Probe,
    /// Skip it; it is cooling down until about then.
    Skip,
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    base_cooldown: Duration,
    max_cooldown: Duration,
    /// A probe that has not reported after this long is presumed lost.
    probe_timeout: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures.
    pub fn new(
        threshold: u32,
        base_cooldown: Duration,
        max_cooldown: Duration,
        probe_timeout: Duration,
    ) -> Breaker {
        Breaker {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            threshold,
            base_cooldown,
            max_cooldown,
            probe_timeout,
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        *self.state.lock().expect("breaker lock")
    }

    /// Whether the upstream is usable (closed, or ready for a probe).
    pub fn is_up(&self) -> bool {
        matches!(self.state(), BreakerState::Closed { .. })
    }

    /// Ask to use the upstream at `now`.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.state.lock().expect("breaker lock");
        match *state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until, cooldown } if now >= until => {
                *state = BreakerState::HalfOpen {
                    since: now,
                    cooldown,
                };
                Admission::Probe
            }
            BreakerState::HalfOpen { since, cooldown }
                if now.duration_since(since) >= self.probe_timeout =>
            {
                *state = BreakerState::HalfOpen {
                    since: now,
                    cooldown,
                };
                Admission::Probe
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => Admission::Skip,
        }
    }

    /// The upstream worked.
    pub fn record_success(&self) {
        *self.state.lock().expect("breaker lock") = BreakerState::Closed { failures: 0 };
    }

    /// The upstream failed at `now`. Returns true if this opened the breaker.
    pub fn record_failure(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        let next = match *state {
            BreakerState::Closed { failures } if failures + 1 >= self.threshold => {
                BreakerState::Open {
                    until: now + self.base_cooldown,
                    cooldown: self.base_cooldown,
                }
            }
            BreakerState::Closed { failures } => BreakerState::Closed {
                failures: failures + 1,
            },
            BreakerState::HalfOpen { cooldown, .. } | BreakerState::Open { cooldown, .. } => {
                let cooldown = (cooldown * 2).min(self.max_cooldown);
                BreakerState::Open {
                    until: now + cooldown,
                    cooldown,
                }
            }
        };
        let opened = matches!(next, BreakerState::Open { .. })
            && !matches!(*state, BreakerState::Open { .. });
        *state = next;
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            3,
            Duration::from_secs(10),
            Duration::from_secs(25),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn opens_after_the_threshold_and_recovers_through_a_probe() {
        let b = breaker();
        let t0 = Instant::now();
        assert!(!b.record_failure(t0));
        assert!(!b.record_failure(t0));
        assert_eq!(b.admit(t0), Admission::Allowed);
        assert!(b.record_failure(t0));
        assert_eq!(b.admit(t0 + Duration::from_secs(9)), Admission::Skip);
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Admission::Probe);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(10)),
            Admission::Skip,
            "only one probe at a time"
        );
        b.record_success();
        assert_eq!(b.admit(t0 + Duration::from_secs(11)), Admission::Allowed);
        assert!(b.is_up());
    }

    #[test]
    fn a_failed_probe_doubles_the_cooldown_up_to_the_limit() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.record_failure(t1);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t1 + Duration::from_secs(20),
                cooldown: Duration::from_secs(20)
            }
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(b.admit(t2), Admission::Probe);
        b.record_failure(t2);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t2 + Duration::from_secs(25),
                cooldown: Duration::from_secs(25)
            }
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker();
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_failure(t0);
        b.record_success();
        b.record_failure(t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Admission::Probe);
        assert_eq!(b.admit(t0 + Duration::from_secs(71)), Admission::Probe);
    }
}
