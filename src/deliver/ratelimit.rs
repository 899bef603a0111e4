//! Per-upstream sending budgets: a rate (`rate_limit = "30/min"`) and a daily quota
//! (`daily_limit`). Mail over budget is held in the queue, not failed.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::RateLimit;

/// The budgets of one upstream.
#[derive(Debug)]
pub struct Budget {
    rate: Option<RateLimit>,
    daily: Option<u64>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// GCRA "theoretical arrival time" (RFC-less but standard): the next send is free at
    /// `tat - period` or later.
    tat: Option<SystemTime>,
    day: u64,
    sent_today: u64,
}

const DAY: u64 = 86_400;

impl Budget {
    /// A budget from the upstream's configuration.
    pub fn new(rate: Option<RateLimit>, daily: Option<u64>) -> Budget {
        Budget {
            rate,
            daily,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether any limit is configured.
    pub fn is_limited(&self) -> bool {
        self.rate.is_some() || self.daily.is_some()
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
            let allowed_from = tat.checked_sub(rate.per).unwrap_or(UNIX_EPOCH);
            if now < allowed_from + interval {
                return Err(allowed_from + interval);
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

    #[test]
    fn allows_a_burst_of_the_rate_then_spaces_messages() {
        let b = Budget::new(
            Some(RateLimit {
                count: 30,
                per: Duration::from_secs(60),
            }),
            None,
        );
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
