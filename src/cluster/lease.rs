//! One upstream's `max_connections` across the cluster: every connection in use holds a
//! lease in the store, renewed by the heartbeat while it is held and given back when the
//! connection is; a replica that dies stops renewing, and its leases expire within
//! [`LEASE_TTL`]. While the store is away, a replica uses at most its share
//! (`max_connections` divided by the live replicas it last saw, at least one).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::Cluster;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// KEYS: the upstream's lease set; ARGV: the lease's name, the cap, the TTL in ms.
/// Returns 1 when the lease was granted.
pub(super) const ACQUIRE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
";

/// KEYS: lease sets; ARGV: the TTL in ms, then per key the lease's name. Extends each
/// lease that still exists.
pub(super) const RENEW_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return #KEYS
";

/// One upstream's connection cap across the cluster.
pub struct SharedConnections {
    cluster: Arc<Cluster>,
    key: String,
    max: usize,
    /// Connections this replica holds while the store is away.
    local: Arc<AtomicUsize>,
}

impl std::fmt::Debug for SharedConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConnections")
            .field("key", &self.key)
            .field("max", &self.max)
            .finish()
    }
}

/// A connection's permission: given back when dropped.
pub enum ConnectionLease {
    /// Held in the store under this name.
    Store {
        /// The cluster that renews and releases it.
        cluster: Arc<Cluster>,
        /// The lease set.
        key: String,
        /// The lease's name in it.
        member: String,
    },
    /// Part of this replica's share while the store is away.
    Local(Arc<AtomicUsize>),
}

impl Drop for ConnectionLease {
    fn drop(&mut self) {
        match self {
            ConnectionLease::Store {
                cluster,
                key,
                member,
            } => {
                cluster.leases.remove(member.as_str());
                let (cluster, key, member) = (cluster.clone(), key.clone(), member.clone());
                // Dropped anywhere, also outside the runtime's async context.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move { cluster.release(&key, &member).await });
                }
            }
            ConnectionLease::Local(count) => {
                count.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

static NEXT_LEASE: AtomicU64 = AtomicU64::new(0);

impl SharedConnections {
    /// The cap of `upstream`'s connections across `cluster`.
    pub fn new(cluster: Arc<Cluster>, upstream: &str, max: usize) -> SharedConnections {
        SharedConnections {
            key: cluster.key(&["connections", upstream]),
            cluster,
            max,
            local: Arc::default(),
        }
    }

    /// A lease for one more connection now, or `None` when the cluster (or, without the
    /// store, this replica's share) is at the cap.
    pub async fn try_acquire(&self) -> Option<ConnectionLease> {
        if self.cluster.is_up() {
            let member = format!(
                "{}:{}:{}",
                self.cluster.node(),
                std::process::id(),
                NEXT_LEASE.fetch_add(1, Ordering::Relaxed)
            );
            let mut invocation = self.cluster.acquire_lease_script.prepare_invoke();
            invocation
                .key(&self.key)
                .arg(&member)
                .arg(self.max)
                .arg(LEASE_TTL.as_millis() as u64);
            if let Some(granted) = self.cluster.request::<u64>(invocation).await {
                if granted == 0 {
                    return None;
                }
                self.cluster.leases.insert(member.clone(), self.key.clone());
                return Some(ConnectionLease::Store {
                    cluster: self.cluster.clone(),
                    key: self.key.clone(),
                    member,
                });
            }
        }
        let share = (self.max / self.cluster.nodes()).max(1);
        let taken = self.local.fetch_add(1, Ordering::SeqCst);
        if taken >= share {
            self.local.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ConnectionLease::Local(self.local.clone()))
    }
}
