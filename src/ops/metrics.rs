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

use crate::telemetry::name;

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
        crate::telemetry::describe();
        handle
    })
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
