//! Per-upstream circuit breaker: after repeated upstream-level failures the upstream is
//! skipped for a cool-down, then one probe decides whether it is back. It recovers by
//! itself; nobody has to re-enable an account by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Breakers closing again, shared by every upstream's breaker: a count, so a delivery
/// can tell that one closed while it ran, and a signal for the mail waiting for them.
#[derive(Debug, Default)]
pub struct Recoveries {
    count: AtomicU64,
    signal: Notify,
}

impl Recoveries {
    /// How many times an upstream became usable again so far. It grows before
    /// [`Recoveries::changed`] wakes anyone.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// An upstream is usable again (a breaker closed, or the upstreams were replaced).
    pub fn recovered(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.signal.notify_one();
    }

    /// Wait for the next recovery (one recovery that came while nobody waited counts).
    pub async fn changed(&self) {
        self.signal.notified().await;
    }
}

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
    /// Told when the breaker closes again, so mail waiting for the upstream goes now.
    recovered: Option<Arc<Recoveries>>,
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
            recovered: None,
        }
    }

    /// Count in `signal` whenever the breaker closes after having been open.
    pub fn with_recovery_signal(mut self, signal: Arc<Recoveries>) -> Breaker {
        self.recovered = Some(signal);
        self
    }

    /// When a probe may next be tried; `None` while the breaker is closed.
    pub fn next_admission(&self) -> Option<Instant> {
        match self.state() {
            BreakerState::Closed { .. } => None,
            BreakerState::Open { until, .. } => Some(until),
            BreakerState::HalfOpen { since, .. } => Some(since + self.probe_timeout),
        }
    }

    /// How long the breaker stays open now, if it is open.
    pub fn open_cooldown(&self) -> Option<Duration> {
        match self.state() {
            BreakerState::Open { cooldown, .. } => Some(cooldown),
            _ => None,
        }
    }

    /// The cool-down after the first opening.
    pub fn base_cooldown(&self) -> Duration {
        self.base_cooldown
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        *self.state.lock().expect("breaker lock")
    }

    /// Whether the upstream is usable (closed, or ready for a probe).
    pub fn is_up(&self) -> bool {
        matches!(self.state(), BreakerState::Closed { .. })
    }

    /// Whether [`Breaker::admit`] would answer `Skip` at `now`, without changing anything:
    /// asked first, so that an upstream being skipped does not use up its sending budget.
    pub fn is_cooling_down(&self, now: Instant) -> bool {
        match self.state() {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until, .. } => now < until,
            BreakerState::HalfOpen { since, .. } => now.duration_since(since) < self.probe_timeout,
        }
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

    /// The upstream worked. Returns true if this closed an open breaker.
    pub fn record_success(&self) -> bool {
        let previous = std::mem::replace(
            &mut *self.state.lock().expect("breaker lock"),
            BreakerState::Closed { failures: 0 },
        );
        let recovered = !matches!(previous, BreakerState::Closed { .. });
        if recovered && let Some(signal) = &self.recovered {
            signal.recovered();
        }
        recovered
    }

    /// An attempt admitted as `admission` failed at `now`. Returns true if this opened
    /// the breaker.
    ///
    /// Only the probe's failure extends the cool-down: attempts that were already under
    /// way when the breaker opened fail too, but they say nothing new about the upstream.
    pub fn record_failure(&self, admission: Admission, now: Instant) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match (*state, admission) {
            (BreakerState::Closed { failures }, _) if failures + 1 >= self.threshold => {
                *state = BreakerState::Open {
                    until: now + self.base_cooldown,
                    cooldown: self.base_cooldown,
                };
                true
            }
            (BreakerState::Closed { failures }, _) => {
                *state = BreakerState::Closed {
                    failures: failures + 1,
                };
                false
            }
            (BreakerState::HalfOpen { cooldown, .. }, Admission::Probe) => {
                let cooldown = (cooldown * 2).min(self.max_cooldown);
                *state = BreakerState::Open {
                    until: now + cooldown,
                    cooldown,
                };
                false
            }
            (BreakerState::Open { .. } | BreakerState::HalfOpen { .. }, _) => false,
        }
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
        assert!(!b.record_failure(Admission::Allowed, t0));
        assert!(!b.record_failure(Admission::Allowed, t0));
        assert_eq!(b.admit(t0), Admission::Allowed);
        assert!(b.record_failure(Admission::Allowed, t0));
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
            b.record_failure(Admission::Allowed, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.record_failure(Admission::Probe, t1);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t1 + Duration::from_secs(20),
                cooldown: Duration::from_secs(20)
            }
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(b.admit(t2), Admission::Probe);
        b.record_failure(Admission::Probe, t2);
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
        b.record_failure(Admission::Allowed, t0);
        b.record_failure(Admission::Allowed, t0);
        b.record_success();
        b.record_failure(Admission::Allowed, t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 1 });
    }

    #[test]
    fn failures_of_attempts_in_flight_when_it_opened_do_not_extend_the_cooldown() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(Admission::Allowed, t0);
        }
        let opened = b.state();
        // Ten more attempts admitted before the breaker opened fail a little later.
        for i in 1..=10 {
            assert!(!b.record_failure(Admission::Allowed, t0 + Duration::from_secs(i)));
        }
        assert_eq!(b.state(), opened, "the cool-down must not grow");
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admission::Probe);
        // A late in-flight failure while the probe runs does not count either.
        b.record_failure(Admission::Allowed, t1);
        assert!(matches!(b.state(), BreakerState::HalfOpen { .. }));
        b.record_success();
        assert!(b.is_up());
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(Admission::Allowed, t0);
        }
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Admission::Probe);
        assert_eq!(b.admit(t0 + Duration::from_secs(71)), Admission::Probe);
    }
}
