//! Sending budgets: a rate (`rate_limit = "30/min"`) and a daily quota (`daily_limit`).
//! Mail over an upstream's budget is held in the queue, not failed.
//!
//! An upstream's rate is spread evenly: one message every period/N, so no window of the
//! period ever holds more than N (providers count per sliding minute, and a burst of N
//! followed by the steady rate would let 2N−1 through in the first minute of a backlog).
//! A submitting user's rate ([`Budget::with_burst`]) allows N at once instead: an app
//! that hands over a handful of messages together should not hear `450` for the second.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::RateLimit;

/// The budgets of one upstream.
#[derive(Debug)]
pub struct Budget {
    rate: Option<RateLimit>,
    daily: Option<u64>,
    /// Whether up to N may go at once (else one every period/N).
    burst: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// GCRA "theoretical arrival time": the next send is free at `tat - tolerance` or
    /// later, where the tolerance is 0 (evenly spread) or `period - period/N` (bursts).
    tat: Option<SystemTime>,
    day: u64,
    sent_today: u64,
}

/// Seconds in a day: daily limits count per UTC day.
pub const DAY: u64 = 86_400;

/// How many of `rate`'s messages the next window of its period still has room for,
/// when the schedule is next free at `next_free` (each send moves it on by period/N).
pub fn room(rate: RateLimit, next_free: Option<SystemTime>, now: SystemTime) -> u64 {
    let interval = (rate.per / rate.count).as_nanos().max(1);
    let ahead = next_free
        .and_then(|t| t.duration_since(now).ok())
        .map_or(0, |d| d.as_nanos().div_ceil(interval) as u64);
    u64::from(rate.count).saturating_sub(ahead)
}

impl Budget {
    /// An upstream's budget: the rate spread evenly, and the daily quota.
    pub fn new(rate: Option<RateLimit>, daily: Option<u64>) -> Budget {
        Budget {
            rate,
            daily,
            burst: false,
            state: Mutex::new(State::default()),
        }
    }

    /// A budget that lets up to N go at once, then one every period/N.
    pub fn with_burst(rate: RateLimit) -> Budget {
        Budget {
            rate: Some(rate),
            daily: None,
            burst: true,
            state: Mutex::new(State::default()),
        }
    }

    /// How far ahead of the theoretical arrival time a send may be.
    fn tolerance(&self, rate: RateLimit) -> Duration {
        if self.burst {
            rate.per - rate.per / rate.count
        } else {
            Duration::ZERO
        }
    }

    /// The rate limit, if any.
    pub fn rate(&self) -> Option<RateLimit> {
        self.rate
    }

    /// The daily limit, if any.
    pub fn daily(&self) -> Option<u64> {
        self.daily
    }

    /// Whether any limit is configured.
    pub fn is_limited(&self) -> bool {
        self.rate.is_some() || self.daily.is_some()
    }

    /// What may be sent now without waiting: messages within the rate, and what is left
    /// of today's quota (`None` where no such limit is set).
    pub fn left(&self, now: SystemTime) -> (Option<u64>, Option<u64>) {
        let state = self.state.lock().expect("budget lock");
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let daily = self.daily.map(|limit| {
            if state.day == secs / DAY {
                limit.saturating_sub(state.sent_today)
            } else {
                limit
            }
        });
        let rate = self.rate.map(|rate| room(rate, state.tat, now));
        (rate, daily)
    }

    /// Take one message from the budget at `now`, or say when the next one is allowed.
    pub fn take(&self, now: SystemTime) -> Result<(), SystemTime> {
        let mut state = self.state.lock().expect("budget lock");
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let today = secs / DAY;
        if state.day != today {
            state.day = today;
            state.sent_today = 0;
        }
        if let Some(limit) = self.daily
            && state.sent_today >= limit
        {
            return Err(UNIX_EPOCH + Duration::from_secs((today + 1) * DAY));
        }
        if let Some(rate) = self.rate {
            let interval = rate.per / rate.count;
            let tat = state.tat.unwrap_or(now).max(now);
            let free_at = tat.checked_sub(self.tolerance(rate)).unwrap_or(UNIX_EPOCH);
            if now < free_at {
                return Err(free_at);
            }
            state.tat = Some(tat + interval);
        }
        state.sent_today += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, secs: u64) -> RateLimit {
        RateLimit {
            count,
            per: Duration::from_secs(secs),
        }
    }

    #[test]
    fn an_upstream_rate_is_spread_evenly_and_no_window_holds_more_than_n() {
        let b = Budget::new(Some(rate(30, 60)), None);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(b.take(t0).is_ok());
        // The next one only after 60 s / 30.
        assert_eq!(b.take(t0), Err(t0 + Duration::from_secs(2)));
        // A backlog sent as fast as the budget allows, over three minutes.
        let mut sent = vec![t0];
        let mut now = t0;
        while now < t0 + Duration::from_secs(180) {
            match b.take(now) {
                Ok(()) => sent.push(now),
                Err(next) => now = next,
            }
        }
        for (i, start) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|t| **t < *start + Duration::from_secs(60))
                .count();
            assert!(in_window <= 30, "{in_window} in the minute from {start:?}");
        }
        // One every 2 s for 180 s.
        assert_eq!(sent.len(), 90);
    }

    #[test]
    fn a_users_rate_allows_a_burst_then_spaces_messages() {
        let b = Budget::with_burst(rate(30, 60));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        for _ in 0..30 {
            assert!(b.take(t0).is_ok());
        }
        let next = b.take(t0).unwrap_err();
        assert_eq!(next, t0 + Duration::from_secs(2));
        assert!(b.take(next).is_ok());
        assert!(b.take(next).is_err());
    }

    #[test]
    fn left_counts_what_the_next_window_still_allows() {
        let b = Budget::new(Some(rate(3, 60)), Some(10));
        let t0 = UNIX_EPOCH + Duration::from_secs(20_000 * DAY + 100);
        assert_eq!(b.left(t0), (Some(3), Some(10)));
        b.take(t0).unwrap();
        assert_eq!(b.left(t0), (Some(2), Some(9)));
        assert!(b.take(t0).is_err());
        // 20 s later the next one may go; after it, one interval is spoken for again.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(b.left(t1).0, Some(3));
        b.take(t1).unwrap();
        assert_eq!(b.left(t1), (Some(2), Some(8)));
        let burst = Budget::with_burst(rate(3, 60));
        for expected in [2, 1, 0] {
            burst.take(t0).unwrap();
            assert_eq!(burst.left(t0).0, Some(expected));
        }
        assert_eq!(burst.left(t0 + Duration::from_secs(20)).0, Some(1));
        assert_eq!(Budget::new(None, None).left(t0), (None, None));
    }

    #[test]
    fn the_daily_limit_resets_at_midnight_utc() {
        let b = Budget::new(None, Some(2));
        let noon = UNIX_EPOCH + Duration::from_secs(20_000 * DAY + 43_200);
        assert!(b.take(noon).is_ok());
        assert!(b.take(noon).is_ok());
        let midnight = UNIX_EPOCH + Duration::from_secs(20_001 * DAY);
        assert_eq!(b.take(noon), Err(midnight));
        assert!(b.take(midnight).is_ok());
    }
}
