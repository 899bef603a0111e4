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
        let rate = self.rate.map(|rate| {
            let interval = rate.per / rate.count;
            let Some(tat) = state.tat.filter(|tat| *tat > now) else {
                return u64::from(rate.count);
            };
            // `take` allows the k-th send from now while now >= tat - per + k * interval.
            let allowed_from = tat.checked_sub(rate.per).unwrap_or(UNIX_EPOCH);
            now.duration_since(allowed_from)
                .map_or(0, |room| {
                    (room.as_nanos() / interval.as_nanos().max(1)) as u64
                })
                .min(u64::from(rate.count))
        });
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
    fn left_counts_down_with_each_message_and_refills_with_time() {
        let b = Budget::new(
            Some(RateLimit {
                count: 3,
                per: Duration::from_secs(60),
            }),
            Some(10),
        );
        let t0 = UNIX_EPOCH + Duration::from_secs(20_000 * DAY + 100);
        assert_eq!(b.left(t0), (Some(3), Some(10)));
        for expected in [2, 1, 0] {
            b.take(t0).unwrap();
            assert_eq!(b.left(t0).0, Some(expected));
        }
        assert!(b.take(t0).is_err());
        assert_eq!(b.left(t0).1, Some(7));
        // One interval (20 s) later one more may go; a whole period later all three.
        assert_eq!(b.left(t0 + Duration::from_secs(20)).0, Some(1));
        assert_eq!(b.left(t0 + Duration::from_secs(60)).0, Some(3));
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
