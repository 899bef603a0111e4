//! Several replicas: what they share through a Redis-protocol store (`[cluster]`).
//!
//! Each replica keeps its own spool; through the store they share each upstream's
//! sending budget, so that three replicas do not send three times a provider's limit:
//! - `rate_limit` as one evenly spread schedule (GCRA) for the whole cluster, and
//!   `daily_limit` as one counter per UTC day that outlives restarts. Both are judged
//!   by one script in the store ([`Cluster::take`]), on the store's clock, so replicas
//!   with skewed clocks agree.
//! - Each upstream's circuit breaker: a replica that opens it tells the others, which
//!   skip the upstream until the cool-down ends; then one replica probes it.
//! - Each upstream's `max_connections`: a connection in use holds a lease in the store,
//!   renewed while held; a dead replica's leases expire.
//! - The live replicas: each one announces itself every [`HEARTBEAT`], and is counted
//!   while its announcement is younger than [`NODE_TTL`].
//!
//! The store is never on the path of a client's `250`: only delivery asks it. When it
//! does not answer within [`STORE_TIMEOUT`], the replica falls back to a local share of
//! each limit (the limit divided by the live replicas it last saw), says so once in the
//! log, exports `smarthost_cluster_store_up 0`, and goes back to the store when the
//! next heartbeat reaches it.

mod breaker;
mod budget;
mod lease;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::{info, warn};

pub use breaker::{ClusterBreaker, SharedBreaker};
pub use budget::{SharedBudget, Verdict};
pub use lease::{ConnectionLease, LEASE_TTL, SharedConnections};

use crate::config::ClusterConfig;
use crate::telemetry::name;

/// How long one request to the store may take before the replica falls back.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a replica announces itself and checks the store.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an announcement counts: a replica that stopped is forgotten after this.
pub const NODE_TTL: Duration = Duration::from_secs(10);

/// The store could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
#[error("cluster.store: {0}")]
pub struct ClusterError(String);

/// This replica's view of the cluster.
pub struct Cluster {
    node: String,
    namespace: String,
    connection: ConnectionManager,
    up: AtomicBool,
    /// Live replicas at the last heartbeat that reached the store (at least 1).
    nodes: AtomicUsize,
    take_script: redis::Script,
    heartbeat_script: redis::Script,
    check_breaker_script: redis::Script,
    open_breaker_script: redis::Script,
    close_breaker_script: redis::Script,
    acquire_lease_script: redis::Script,
    renew_leases_script: redis::Script,
    /// The connection leases this replica holds: name → lease set.
    leases: dashmap::DashMap<String, String>,
}

/// One replica's announcement: add it with its expiry on the store's clock, forget the
/// expired ones, count the rest.
const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
";

impl Cluster {
    /// The cluster of `config`, or `None` without `[cluster] store`. Nothing is
    /// contacted yet: a store that is down at start means a fallback, not a failed start.
    pub fn from_config(config: &ClusterConfig) -> Result<Option<Arc<Cluster>>, ClusterError> {
        let Some(store) = &config.store else {
            return Ok(None);
        };
        // The URL may hold the password: errors name the problem, never the URL.
        let client = match &config.store_ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| {
                        ClusterError(format!(
                            "cluster.store_ca_file: cannot read {}: {e}; give a readable PEM file with the CA certificate of the store",
                            ca.display()
                        ))
                    })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(store.expose(), certificates)
            }
            None => redis::Client::open(store.expose()),
        }
        .map_err(|e| {
            ClusterError(format!(
                "not a usable store URL ({:?}): write it as redis://[user:password@]host:port/db, or rediss://... for TLS",
                e.kind()
            ))
        })?;
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(STORE_TIMEOUT))
            .set_response_timeout(Some(STORE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, settings)
            .map_err(|e| ClusterError(e.to_string()))?;
        let node = config.node.clone().unwrap_or_else(host_name);
        Ok(Some(Arc::new(Cluster {
            node,
            namespace: config.namespace.clone(),
            connection,
            up: AtomicBool::new(true),
            nodes: AtomicUsize::new(1),
            take_script: redis::Script::new(budget::TAKE_SCRIPT),
            heartbeat_script: redis::Script::new(HEARTBEAT_SCRIPT),
            check_breaker_script: redis::Script::new(breaker::CHECK_SCRIPT),
            open_breaker_script: redis::Script::new(breaker::OPEN_SCRIPT),
            close_breaker_script: redis::Script::new(breaker::CLOSE_SCRIPT),
            acquire_lease_script: redis::Script::new(lease::ACQUIRE_SCRIPT),
            renew_leases_script: redis::Script::new(lease::RENEW_SCRIPT),
            leases: dashmap::DashMap::new(),
        })))
    }

    /// This replica's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the store answered the last request.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Live replicas at the last heartbeat that reached the store.
    pub fn nodes(&self) -> usize {
        self.nodes.load(Ordering::Relaxed).max(1)
    }

    /// A key in this cluster's namespace.
    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.namespace.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Record whether the store answered; log the change once, keep the gauge current.
    fn mark(&self, up: bool, error: Option<&str>) {
        metrics::gauge!(name::CLUSTER_STORE_UP).set(if up { 1.0 } else { 0.0 });
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                info!(node = %self.node, nodes = self.nodes(), "cluster store reachable again: budgets are shared again");
            } else {
                warn!(
                    node = %self.node,
                    error = error.unwrap_or("no answer"),
                    nodes = self.nodes(),
                    "cluster store unreachable: each upstream's rate_limit and daily_limit fall back to this replica's share (the limit divided by the replicas last seen); mail is still accepted and delivered"
                );
            }
        }
    }

    /// Run one store request with the timeout, marking the store up or down.
    async fn request<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut connection = self.connection.clone();
        let result =
            tokio::time::timeout(STORE_TIMEOUT, invocation.invoke_async(&mut connection)).await;
        match result {
            Ok(Ok(value)) => {
                self.mark(true, None);
                Some(value)
            }
            Ok(Err(e)) => {
                self.mark(false, Some(&format!("{:?}", e.kind())));
                None
            }
            Err(_) => {
                self.mark(false, Some("timed out"));
                None
            }
        }
    }

    /// Announce this replica and learn how many are live; false when the store did not
    /// answer.
    pub async fn heartbeat(&self) -> bool {
        let ttl = NODE_TTL.as_millis() as u64;
        let mut invocation = self.heartbeat_script.prepare_invoke();
        invocation
            .key(self.key(&["nodes"]))
            .arg(&self.node)
            .arg(ttl);
        match self.request::<u64>(invocation).await {
            Some(count) => {
                self.nodes.store((count as usize).max(1), Ordering::Relaxed);
                metrics::gauge!(name::CLUSTER_NODES).set(count as f64);
                true
            }
            None => false,
        }
    }

    /// Extend every connection lease this replica holds.
    async fn renew_leases(&self) {
        let held: Vec<(String, String)> = self
            .leases
            .iter()
            .map(|e| (e.value().clone(), e.key().clone()))
            .collect();
        if held.is_empty() {
            return;
        }
        let mut invocation = self.renew_leases_script.prepare_invoke();
        invocation.arg(LEASE_TTL.as_millis() as u64);
        for (key, member) in &held {
            invocation.key(key).arg(member);
        }
        let _ = self.request::<u64>(invocation).await;
    }

    /// Give a connection lease back.
    async fn release(&self, key: &str, member: &str) {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("ZREM");
        command.arg(key).arg(member);
        let remove = command.query_async::<u64>(&mut connection);
        // Not given back: it expires within LEASE_TTL.
        let _ = tokio::time::timeout(STORE_TIMEOUT, remove).await;
    }

    /// Heartbeats every [`HEARTBEAT`] until the task is dropped.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        info!(node = %cluster.node, namespace = %cluster.namespace, "cluster: sharing upstream budgets through the store");
        tokio::spawn(async move {
            loop {
                if cluster.heartbeat().await {
                    cluster.renew_leases().await;
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        })
    }
}

/// The host name (a pod's name in a StatefulSet), for `[cluster] node`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("node-{}", std::process::id()))
}

/// Microseconds since the epoch as the store counts them, to a [`SystemTime`].
fn from_micros(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}
