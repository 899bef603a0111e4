//! Prometheus metrics and the health endpoints, on `[metrics] listen`.
//!
//! `GET /metrics` (Prometheus text format), `GET /healthz` (the process is alive) and
//! `GET /readyz` (the spool is writable and at least one upstream is usable; 503 with
//! the reason otherwise). The HTTP side is deliberately tiny: one request per
//! connection, GET only.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Metric names, in one place.
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
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder (once) and return its handle.
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &buckets)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // A second relay in the same process (tests) shares the first recorder.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(name::RECEIVED, "Messages accepted with 250");
    describe_counter!(
        name::REJECTED,
        "Messages and connections refused, by reason"
    );
    describe_counter!(name::DELIVERED, "Recipients delivered, by upstream");
    describe_counter!(name::DEFERRED, "Recipients deferred, by upstream");
    describe_counter!(name::BOUNCED, "Bounces (RFC 3464) generated");
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
}

/// Mark an upstream as usable (at start, before any attempt).
pub fn gauge_up(upstream: &str) {
    recorder();
    ::metrics::gauge!(name::UPSTREAM_UP, "upstream" => upstream.to_owned()).set(1.0);
}

/// What `/readyz` asks: `Ok` or the reason it is not ready.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Bind the endpoint; fails before anything is served if the address is unusable.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve `/metrics`, `/healthz`, `/readyz` until the task is dropped.
pub async fn serve(listener: TcpListener, ready: Readiness) {
    let handle = recorder();
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "metrics and health endpoints");
    }
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = stream.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
                        || buf[..len].windows(2).any(|w| w == b"\n\n")
                    {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let mut words = request.split_whitespace();
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let (status, content_type, body) = respond(method, path, handle, &ready);
            debug!(client = %peer, path, status, "metrics request");
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        });
    }
}

fn respond(
    method: &str,
    path: &str,
    handle: &PrometheusHandle,
    ready: &Readiness,
) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match ready() {
            Ok(()) => ("200 OK", TEXT, "ready\n".into()),
            Err(reason) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
