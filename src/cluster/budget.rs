//! One upstream's sending budget shared by every replica: the same rules as the local
//! [`Budget`] (one message every period/N, a daily quota by UTC day), judged by one
//! script in the store, or by a local share of the limits while the store is away.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Cluster, from_micros};
use crate::config::RateLimit;
use crate::deliver::ratelimit::{Budget, DAY, room};

/// Take one message from the shared budget. KEYS: the rate key, the daily key's prefix;
/// ARGV: period/N in microseconds (0: no rate), the daily limit (-1: none).
/// Returns {allowed (1/0), the schedule's next free time or the end of the day (µs),
/// today's count, the store's now (µs)}.
pub(super) const TAKE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local daily = tonumber(ARGV[2])
local day = math.floor(tonumber(t[1]) / 86400)
local dkey = KEYS[2] .. ':' .. day
local used = 0
if daily >= 0 then
  used = tonumber(redis.call('GET', dkey) or '0')
  if used >= daily then
    return {0, (day + 1) * 86400000000, used, now}
  end
end
local tat = now
if interval > 0 then
  local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
  if stored > now then
    return {0, stored, used, now}
  end
  tat = now + interval
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor(interval / 1000) + 60000)
end
if daily >= 0 then
  used = redis.call('INCR', dkey)
  redis.call('EXPIRE', dkey, 172800)
end
return {1, tat, used, now}
";

/// Whether a message may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Go,
    /// Hold it until then.
    WaitUntil(SystemTime),
}

/// What the store said last: for the status page.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// When the schedule is next free, on the local clock.
    next_free: SystemTime,
    /// Today's count across the cluster, and the day it is for.
    used: u64,
    day: u64,
}

/// An upstream's budget across the cluster.
pub struct SharedBudget {
    cluster: Arc<Cluster>,
    upstream: String,
    rate: Option<RateLimit>,
    daily: Option<u64>,
    /// The local share while the store is away: the replica count it was cut for, and
    /// the budget.
    fallback: Mutex<Option<(usize, Arc<Budget>)>>,
    seen: Mutex<Option<Seen>>,
}

impl std::fmt::Debug for SharedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudget")
            .field("upstream", &self.upstream)
            .field("rate", &self.rate)
            .field("daily", &self.daily)
            .finish()
    }
}

impl SharedBudget {
    /// The shared budget of `upstream`, or `None` when it has no limits to share.
    pub fn new(
        cluster: Arc<Cluster>,
        upstream: &str,
        rate: Option<RateLimit>,
        daily: Option<u64>,
    ) -> Option<SharedBudget> {
        (rate.is_some() || daily.is_some()).then(|| SharedBudget {
            cluster,
            upstream: upstream.to_owned(),
            rate,
            daily,
            fallback: Mutex::new(None),
            seen: Mutex::new(None),
        })
    }

    /// Take one message: from the store while it answers, else from this replica's share.
    pub async fn take(&self) -> Verdict {
        if self.cluster.is_up()
            && let Some(verdict) = self.take_from_store().await
        {
            return verdict;
        }
        match self.share().take(SystemTime::now()) {
            Ok(()) => Verdict::Go,
            Err(until) => Verdict::WaitUntil(until),
        }
    }

    async fn take_from_store(&self) -> Option<Verdict> {
        let interval = self
            .rate
            .map_or(0, |r| (r.per / r.count).as_micros().max(1) as u64);
        let daily = self.daily.map_or(-1, |d| d as i64);
        let mut invocation = self.cluster.take_script.prepare_invoke();
        invocation
            .key(self.cluster.key(&["rate", &self.upstream]))
            .key(self.cluster.key(&["daily", &self.upstream]))
            .arg(interval)
            .arg(daily);
        let (allowed, at, used, store_now): (u64, u64, u64, u64) =
            self.cluster.request(invocation).await?;
        // The store's times, moved onto this replica's clock.
        let local_now = SystemTime::now();
        let offset = |micros: u64| {
            let ahead = Duration::from_micros(micros.saturating_sub(store_now));
            local_now + ahead
        };
        let next_free = if allowed == 1 && self.rate.is_none() {
            local_now
        } else {
            offset(at)
        };
        *self.seen.lock().expect("seen lock") = Some(Seen {
            next_free,
            used,
            day: from_micros(store_now)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / DAY),
        });
        Some(if allowed == 1 {
            Verdict::Go
        } else {
            Verdict::WaitUntil(offset(at))
        })
    }

    /// This replica's share of the limits, cut for the replicas last seen.
    fn share(&self) -> Arc<Budget> {
        let nodes = self.cluster.nodes();
        let mut fallback = self.fallback.lock().expect("fallback lock");
        if let Some((for_nodes, budget)) = fallback.as_ref()
            && *for_nodes == nodes
        {
            return budget.clone();
        }
        let budget = Arc::new(Budget::new(
            self.rate.map(|r| share_of_rate(r, nodes)),
            self.daily.map(|d| (d / nodes as u64).max(1)),
        ));
        *fallback = Some((nodes, budget.clone()));
        budget
    }

    /// What the status page shows: the next window's room and today's rest, as the
    /// store last said (or the local share while the store is away).
    pub fn left(&self, now: SystemTime) -> (Option<u64>, Option<u64>) {
        if !self.cluster.is_up() {
            return self.share().left(now);
        }
        let seen = *self.seen.lock().expect("seen lock");
        let rate = self
            .rate
            .map(|rate| room(rate, seen.map(|s| s.next_free), now));
        let today = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / DAY);
        let daily = self.daily.map(|limit| match seen {
            Some(s) if s.day == today => limit.saturating_sub(s.used),
            _ => limit,
        });
        (rate, daily)
    }
}

/// `rate` divided among `nodes` replicas: N/nodes per period, or one per a longer period
/// when N is smaller than the number of replicas.
fn share_of_rate(rate: RateLimit, nodes: usize) -> RateLimit {
    let nodes = nodes.max(1) as u32;
    if rate.count >= nodes {
        RateLimit {
            count: rate.count / nodes,
            per: rate.per,
        }
    } else {
        RateLimit {
            count: 1,
            per: rate.per * nodes / rate.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_never_exceeds_the_whole_across_the_replicas() {
        let per = Duration::from_secs(60);
        let share = share_of_rate(RateLimit { count: 30, per }, 3);
        assert_eq!((share.count, share.per), (10, per));
        // 2/min over 3 replicas: each one message every 90 s, 2 a minute in all.
        let share = share_of_rate(RateLimit { count: 2, per }, 3);
        assert_eq!((share.count, share.per), (1, Duration::from_secs(90)));
        let share = share_of_rate(RateLimit { count: 7, per }, 1);
        assert_eq!((share.count, share.per), (7, per));
    }
}
