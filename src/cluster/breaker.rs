//! One upstream's circuit breaker as the whole cluster sees it: a replica that opens its
//! breaker tells the store, the others skip the upstream until the cool-down ends, and
//! then one replica, not all, probes it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Cluster;

/// How long an answer of the store is trusted before asking again.
const RECHECK: Duration = Duration::from_secs(1);

/// KEYS: the breaker key, the probe key; ARGV: this replica's name, the probe's time
/// limit in ms. Returns {state, ms until the next question is worth asking}: state 0
/// closed, 1 open (skip), 2 half-open and this replica probes.
pub(super) const CHECK_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilms = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilms == 0 then return {0, 0} end
if now < untilms then return {1, untilms - now} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return {2, 0} end
return {1, tonumber(ARGV[2])}
";

/// KEYS: the breaker key, the probe key; ARGV: the cool-down in ms. Opens the breaker
/// for the cluster (kept a day past its end, so a probe is still needed afterwards).
pub(super) const OPEN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown = tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', now + cooldown), 'PX', cooldown + 86400000)
redis.call('DEL', KEYS[2])
return 1
";

/// What the cluster says of the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterBreaker {
    /// Usable.
    Closed,
    /// Open on some replica: skip it.
    Open,
    /// The cool-down is over and this replica was chosen to probe it.
    Probe,
}

/// The cluster's breaker of one upstream.
pub struct SharedBreaker {
    cluster: Arc<Cluster>,
    breaker_key: String,
    probe_key: String,
    probe_timeout: Duration,
    /// The last answer and until when it holds.
    cached: Mutex<Option<(ClusterBreaker, Instant)>>,
}

impl std::fmt::Debug for SharedBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBreaker")
            .field("key", &self.breaker_key)
            .finish()
    }
}

impl SharedBreaker {
    /// The shared breaker of `upstream`; a probe may take `probe_timeout`.
    pub fn new(cluster: Arc<Cluster>, upstream: &str, probe_timeout: Duration) -> SharedBreaker {
        SharedBreaker {
            breaker_key: cluster.key(&["breaker", upstream]),
            probe_key: cluster.key(&["probe", upstream]),
            cluster,
            probe_timeout,
            cached: Mutex::new(None),
        }
    }

    /// Whether to use the upstream, as far as the other replicas know. Without the
    /// store it is `Closed`: each replica's own breaker still protects the upstream.
    pub async fn check(&self) -> ClusterBreaker {
        let now = Instant::now();
        if let Some((answer, until)) = *self.cached.lock().expect("breaker cache")
            && now < until
        {
            return answer;
        }
        if !self.cluster.is_up() {
            return ClusterBreaker::Closed;
        }
        let mut invocation = self.cluster.check_breaker_script.prepare_invoke();
        invocation
            .key(&self.breaker_key)
            .key(&self.probe_key)
            .arg(self.cluster.node())
            .arg(self.probe_timeout.as_millis() as u64);
        let Some((state, wait_ms)) = self.cluster.request::<(u64, u64)>(invocation).await else {
            return ClusterBreaker::Closed;
        };
        let answer = match state {
            0 => ClusterBreaker::Closed,
            2 => ClusterBreaker::Probe,
            _ => ClusterBreaker::Open,
        };
        // A probe is handed out once; other answers hold a while.
        if answer != ClusterBreaker::Probe {
            let hold = Duration::from_millis(wait_ms).clamp(Duration::from_millis(50), RECHECK);
            let hold = if answer == ClusterBreaker::Closed {
                RECHECK
            } else {
                hold
            };
            *self.cached.lock().expect("breaker cache") = Some((answer, now + hold));
        }
        answer
    }

    /// Whether the cluster had the upstream open at the last answer (for the status page).
    pub fn seen_open(&self) -> bool {
        matches!(
            *self.cached.lock().expect("breaker cache"),
            Some((ClusterBreaker::Open, _))
        )
    }

    /// This replica opened its breaker (or its probe failed): every replica skips the
    /// upstream for `cooldown`.
    pub async fn opened(&self, cooldown: Duration) {
        let mut invocation = self.cluster.open_breaker_script.prepare_invoke();
        invocation
            .key(&self.breaker_key)
            .key(&self.probe_key)
            .arg(cooldown.as_millis() as u64);
        if self.cluster.request::<u64>(invocation).await.is_some() {
            *self.cached.lock().expect("breaker cache") =
                Some((ClusterBreaker::Open, Instant::now() + RECHECK));
        }
    }

    /// The upstream works again: the cluster's breaker closes.
    pub async fn closed(&self) {
        let mut invocation = self.cluster.close_breaker_script.prepare_invoke();
        invocation.key(&self.breaker_key).key(&self.probe_key);
        if self.cluster.request::<u64>(invocation).await.is_some() {
            *self.cached.lock().expect("breaker cache") = None;
        }
    }
}

/// KEYS: the breaker key, the probe key.
pub(super) const CLOSE_SCRIPT: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";
