//! Prometheus metrics and the health endpoints, on `[metrics] listen`.
//!
//! `GET /metrics` (Prometheus text format), `GET /healthz` (the process is alive) and
//! `GET /readyz` (the spool is writable and at least one upstream is usable; 503 with
//! the reason otherwise). HEAD works wherever GET does; other methods get 405.
//!
//! The server is hyper's HTTP/1.1 (keep-alive, so a scraper reuses its connection),
//! with a bound on connections and on the time to send a request's header, which also
//! closes idle keep-alive connections. [`Endpoint`] holds what the answers need and
//! routes a request by path ([`Route`]); it has no I/O, so it is tested without sockets.
//!
//! With `[metrics] password_file`, every route but `/healthz` and `/readyz` needs HTTP
//! Basic authentication (RFC 7617) as user `admin`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::status::{self, StatusSource};
use crate::config::Secret;
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

/// Connections served at once; further clients wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's header, and how long a keep-alive
/// connection may stay idle before the next one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The user name of HTTP Basic authentication.
const USER: &str = "admin";

/// The realm and charset of the `WWW-Authenticate` challenge (RFC 7617 §2, §2.1).
const CHALLENGE: &str = "Basic realm=\"smarthost\", charset=\"UTF-8\"";

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

/// The status page's own inline style and script, its data from this origin, nothing
/// from anywhere else.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Bind the endpoint; fails before anything is served if the address is unusable.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// A path the endpoint serves. Later routes (a status page) are added here and in
/// [`Endpoint::respond`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/`: the status page.
    StatusPage,
    /// `/api/status`: the status page's data as JSON.
    StatusApi,
    /// `/metrics`: Prometheus text format.
    Metrics,
    /// `/healthz`: the process is alive.
    Healthz,
    /// `/readyz`: ready to accept and deliver mail.
    Readyz,
    /// Anything else: 404 with the paths that exist.
    NotFound,
}

impl Route {
    /// The route of a request path (without the query).
    pub fn of(path: &str) -> Route {
        match path {
            "/" => Route::StatusPage,
            "/api/status" => Route::StatusApi,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            _ => Route::NotFound,
        }
    }

    /// Whether the route answers without authentication: the probes of an orchestrator
    /// (which carry no credentials) and reveal nothing but "up" or the reason it is not.
    pub fn is_open(self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz)
    }
}

/// The credentials of HTTP Basic authentication, kept as the SHA-256 digest of
/// `admin:password`: comparing digests takes the same time whatever the guess.
struct BasicAuth {
    expected: [u8; 32],
}

impl BasicAuth {
    fn new(password: &Secret) -> BasicAuth {
        BasicAuth {
            expected: sha256(format!("{USER}:{}", password.expose()).as_bytes()),
        }
    }

    /// Whether `headers` carry `Authorization: Basic` with user `admin` and the password.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let Some(token) = value
            .get(..6)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
            .map(|_| value[6..].trim_ascii())
        else {
            return false;
        };
        let Ok(credentials) = base64::engine::general_purpose::STANDARD.decode(token) else {
            return false;
        };
        fixed_time_eq(&sha256(&credentials), &self.expected)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Equality whose time does not depend on where the digests differ.
fn fixed_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What the endpoint answers with: the metrics, the readiness check, the credentials.
pub struct Endpoint {
    metrics: &'static PrometheusHandle,
    ready: Readiness,
    auth: Option<BasicAuth>,
    status: Option<StatusSource>,
}

impl Endpoint {
    /// An endpoint asking `ready` for `/readyz`; with `password`, every route but the
    /// open ones ([`Route::is_open`]) needs Basic authentication as `admin`.
    pub fn new(ready: Readiness, password: Option<&Secret>) -> Endpoint {
        Endpoint {
            metrics: recorder(),
            ready,
            auth: password.map(BasicAuth::new),
            status: None,
        }
    }

    /// Serve the status page and `/api/status` from `status`.
    pub fn with_status(mut self, status: StatusSource) -> Endpoint {
        self.status = Some(status);
        self
    }

    /// Whether a password protects the endpoint.
    pub fn has_password(&self) -> bool {
        self.auth.is_some()
    }

    /// The answer to `method path` with `headers`. For HEAD, hyper sends the head of
    /// this answer (with its Content-Length) and leaves the body out.
    pub fn respond(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let route = Route::of(path);
        if !route.is_open()
            && let Some(auth) = &self.auth
            && !auth.admits(headers)
        {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "authentication required: log in as admin with the password in [metrics] password_file\n",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(CHALLENGE),
            );
            return response;
        }
        match (route, &self.status) {
            (Route::StatusPage, Some(status)) => {
                let mut response = body(StatusCode::OK, HTML, status::page(&status.status()));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(PAGE_POLICY),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return response;
            }
            (Route::StatusApi, Some(status)) => {
                let json = serde_json::to_string(&status.status()).expect("the status serializes");
                let mut response = body(StatusCode::OK, JSON, json);
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return response;
            }
            _ => {}
        }
        match route {
            Route::StatusPage | Route::StatusApi => text(
                StatusCode::NOT_FOUND,
                "no status page here; try /metrics, /healthz or /readyz\n",
            ),
            Route::Metrics => body(StatusCode::OK, PROMETHEUS_TEXT, self.metrics.render()),
            Route::Healthz => text(StatusCode::OK, "ok\n"),
            Route::Readyz => match (self.ready)() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(reason) => body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("not ready: {reason}\n"),
                ),
            },
            Route::NotFound => text(
                StatusCode::NOT_FOUND,
                "try / (status page), /api/status, /metrics, /healthz or /readyz\n",
            ),
        }
    }
}

fn text(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    body(status, TEXT, text)
}

fn body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Whether only this host can reach `addr` (IPv4-mapped loopback included).
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Serve `endpoint` on `listener` until the task is dropped (which ends the
/// connections too).
pub async fn serve(listener: TcpListener, endpoint: Endpoint) {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, authentication = endpoint.has_password(), "metrics and health endpoints");
        if !is_loopback(addr) && !endpoint.has_password() {
            warn!(
                listen = %addr,
                "the metrics endpoint is reachable from other hosts without a password: anyone who can \
                 connect reads /metrics (message counts, upstream names, queue state). Set [metrics] \
                 password_file (SMARTHOST__METRICS__PASSWORD_FILE) to require HTTP Basic authentication, \
                 or listen on 127.0.0.1"
            );
        }
    }
    let endpoint = Arc::new(endpoint);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(stream, peer, endpoint.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One HTTP/1.1 connection, as many requests as the client sends on it.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, endpoint: Arc<Endpoint>) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = endpoint.respond(request.method(), request.uri().path(), request.headers());
        debug!(client = %peer, method = %request.method(), path = request.uri().path(), status = response.status().as_u16(), "metrics request");
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        debug!(client = %peer, error = %e, "metrics connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(password: Option<&str>, ready: Result<(), String>) -> Endpoint {
        let ready: Readiness = Arc::new(move || ready.clone());
        Endpoint::new(ready, password.map(Secret::new).as_ref())
    }

    fn basic(credentials: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(credentials);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).unwrap(),
        );
        headers
    }

    fn status(e: &Endpoint, method: Method, path: &str, headers: &HeaderMap) -> u16 {
        e.respond(&method, path, headers).status().as_u16()
    }

    #[test]
    fn routes_by_path() {
        let e = endpoint(None, Ok(()));
        let none = HeaderMap::new();
        assert_eq!(status(&e, Method::GET, "/metrics", &none), 200);
        assert_eq!(status(&e, Method::HEAD, "/healthz", &none), 200);
        assert_eq!(status(&e, Method::GET, "/readyz", &none), 200);
        assert_eq!(status(&e, Method::GET, "/", &none), 404);
        assert_eq!(status(&e, Method::GET, "/metrics/", &none), 404);
        let post = e.respond(&Method::POST, "/metrics", &none);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }

    #[tokio::test]
    async fn not_ready_is_503_with_the_reason() {
        use http_body_util::BodyExt as _;
        let e = endpoint(None, Err("spool full".into()));
        let r = e.respond(&Method::GET, "/readyz", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "not ready: spool full\n");
    }

    #[test]
    fn a_password_guards_all_but_the_probes() {
        let e = endpoint(Some("s3cret"), Ok(()));
        let none = HeaderMap::new();
        for path in ["/metrics", "/nope", "/"] {
            let r = e.respond(&Method::GET, path, &none);
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(r.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
        }
        assert_eq!(status(&e, Method::GET, "/healthz", &none), 200);
        assert_eq!(status(&e, Method::GET, "/readyz", &none), 200);
        assert_eq!(
            status(&e, Method::GET, "/metrics", &basic("admin:s3cret")),
            200
        );
        assert_eq!(
            status(&e, Method::GET, "/nope", &basic("admin:s3cret")),
            404
        );
        for wrong in [
            "admin:s3cre",
            "admin:s3cret ",
            "root:s3cret",
            "s3cret",
            "admin:",
        ] {
            assert_eq!(
                status(&e, Method::GET, "/metrics", &basic(wrong)),
                401,
                "{wrong}"
            );
        }
    }

    #[test]
    fn the_authorization_header_is_parsed_strictly() {
        let auth = BasicAuth::new(&Secret::new("pw"));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            auth.admits(&headers)
        };
        let token = base64::engine::general_purpose::STANDARD.encode("admin:pw");
        assert!(with(&format!("Basic {token}")));
        assert!(
            with(&format!("basic {token}")),
            "the scheme is case-insensitive"
        );
        assert!(with(&format!("BASIC  {token} ")));
        assert!(!with(&format!("Bearer {token}")));
        assert!(!with("Basic not-base64!"));
        assert!(!with("Basic"));
        assert!(!with(""));
    }

    #[test]
    fn loopback_addresses() {
        for (addr, want) in [
            ("127.0.0.1:9025", true),
            ("[::1]:9025", true),
            ("[::ffff:127.0.0.1]:9025", true),
            ("0.0.0.0:9025", false),
            ("[::]:9025", false),
            ("10.1.2.3:9025", false),
        ] {
            assert_eq!(is_loopback(addr.parse().unwrap()), want, "{addr}");
        }
    }
}
