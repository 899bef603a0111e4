//! Metric names and their descriptions, and the recent [`activity`] the status page
//! shows: a leaf every stage may use to record what it does (with the `metrics` macros,
//! and through [`activity::Activity`]). Serving them is `ops::metrics`'s job.

pub mod activity;

/// Metric names, in one place (the SPEC lists them).
pub mod name {
    /// Messages accepted (250 sent).
    pub const RECEIVED: &str = "smarthost_messages_received_total";
    /// Messages or connections refused, by `reason`.
    pub const REJECTED: &str = "smarthost_messages_rejected_total";
    /// Recipients delivered, by `upstream`.
    pub const DELIVERED: &str = "smarthost_messages_delivered_total";
    /// Recipients deferred, by `upstream`.
    pub const DEFERRED: &str = "smarthost_messages_deferred_total";
    /// Bounces generated.
    pub const BOUNCED: &str = "smarthost_messages_bounced_total";
    /// Messages whose `250` was held back because delivery was behind acceptance.
    pub const ACCEPT_PACED: &str = "smarthost_accept_paced_total";
    /// Messages whose body went to the spool while it arrived, by `reason` (`size`: a
    /// large message; `memory`: `spool.memory_limit` was in use).
    pub const SPOOLED_BODIES: &str = "smarthost_spooled_bodies_total";
    /// Message content held in memory now (what `spool.memory_limit` bounds).
    pub const CONTENT_MEMORY: &str = "smarthost_content_memory_bytes";
    /// Messages in the spool.
    pub const QUEUE: &str = "smarthost_queue_messages";
    /// Age of the oldest queued message.
    pub const QUEUE_OLDEST: &str = "smarthost_queue_oldest_age_seconds";
    /// Client connections open now.
    pub const CONNECTIONS: &str = "smarthost_connections_active";
    /// Time for one delivery attempt (walk over the upstreams).
    pub const DELIVERY_DURATION: &str = "smarthost_delivery_duration_seconds";
    /// Time to sign one message.
    pub const DKIM_DURATION: &str = "smarthost_dkim_sign_duration_seconds";
    /// 1 while an upstream is usable (circuit breaker closed), by `upstream`.
    pub const UPSTREAM_UP: &str = "smarthost_upstream_up";
    /// OAuth token requests, by `upstream` and `result` (`ok`, `error`).
    pub const OAUTH_REFRESH: &str = "smarthost_oauth_refresh_total";
    /// When the upstream's current OAuth access token expires (Unix time), by `upstream`.
    pub const OAUTH_TOKEN_EXPIRY: &str = "smarthost_oauth_token_expiry_seconds";
    /// Failed SMTP AUTH attempts (wrong user or password).
    pub const AUTH_FAILURES: &str = "smarthost_auth_failures_total";
    /// Client addresses locked out after `[auth] max_failures` failed attempts.
    pub const AUTH_LOCKOUTS: &str = "smarthost_auth_lockouts_total";
    /// 1 while the `[cluster]` store answers, 0 while budgets fall back to local shares.
    pub const CLUSTER_STORE_UP: &str = "smarthost_cluster_store_up";
    /// Live replicas at the last heartbeat that reached the store.
    pub const CLUSTER_NODES: &str = "smarthost_cluster_nodes";
}

/// Describe every metric to the installed recorder (units and help texts).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(name::RECEIVED, "Messages accepted with 250");
    describe_counter!(
        name::REJECTED,
        "Messages and connections refused, by reason"
    );
    describe_counter!(name::DELIVERED, "Recipients delivered, by upstream");
    describe_counter!(name::DEFERRED, "Recipients deferred, by upstream");
    describe_counter!(name::BOUNCED, "Bounces (RFC 3464) generated");
    describe_counter!(
        name::ACCEPT_PACED,
        "Messages whose 250 was held back (at most 1 s) because delivery was behind acceptance"
    );
    describe_counter!(
        name::SPOOLED_BODIES,
        "Messages whose body went to the spool while it arrived, by reason (size, memory)"
    );
    describe_gauge!(
        name::CONTENT_MEMORY,
        Unit::Bytes,
        "Message content held in memory now (bounded by spool.memory_limit)"
    );
    describe_gauge!(name::QUEUE, "Messages in the spool");
    describe_gauge!(
        name::QUEUE_OLDEST,
        Unit::Seconds,
        "Age of the oldest queued message"
    );
    describe_gauge!(name::CONNECTIONS, "Client connections open now");
    describe_histogram!(
        name::DELIVERY_DURATION,
        Unit::Seconds,
        "One delivery attempt over the upstreams"
    );
    describe_histogram!(name::DKIM_DURATION, Unit::Seconds, "Signing one message");
    describe_counter!(
        name::OAUTH_REFRESH,
        "OAuth access token requests, by upstream and result (ok, error)"
    );
    describe_gauge!(
        name::OAUTH_TOKEN_EXPIRY,
        Unit::Seconds,
        "Unix time at which the upstream's current OAuth access token expires"
    );
    describe_gauge!(
        name::UPSTREAM_UP,
        "1 while the upstream is usable (circuit breaker closed)"
    );
    describe_counter!(
        name::AUTH_FAILURES,
        "Failed SMTP AUTH attempts (wrong user name or password)"
    );
    describe_gauge!(
        name::CLUSTER_STORE_UP,
        "1 while the cluster store answers; 0 while each replica uses a local share of the budgets"
    );
    describe_gauge!(
        name::CLUSTER_NODES,
        "Live replicas at the last heartbeat that reached the cluster store"
    );
    describe_counter!(
        name::AUTH_LOCKOUTS,
        "Client addresses locked out after auth.max_failures failed AUTH attempts"
    );
}
