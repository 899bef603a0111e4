//! The metrics and health endpoints of a running relay, over real sockets.

pub mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use smarthost::config::ConfigSource;
use smarthost::ops::send::{SendRequest, send};
use support::{HttpConnection, Relay, TestConfig, http_get as get, http_request, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_after_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path()).load();
    let relay = smarthost::start(Arc::new(config)).await.unwrap();
    let smtp = relay.local_addrs()[0];
    let http = relay.metrics_addr().expect("metrics listen is configured");

    assert_eq!(get(http, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(http, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(get(http, "/nope").await.0, 404);

    let request = SendRequest {
        server: smtp.to_string(),
        from: "app@example.com".into(),
        to: vec!["user@example.net".into()],
        subject: "metrics".into(),
        body: "hello".into(),
        raw: None,
        helo: "test".into(),
        timeout: Duration::from_secs(10),
    };
    let reply = send(&request).await.unwrap();
    assert_eq!(reply.code, 250);

    // Delivery happens after the 250 in queue mode; wait for the counter.
    let delivered = "smarthost_messages_delivered_total{upstream=\"maildir\",route=\"none\"} 1";
    let body = wait_for("the delivery counted", || async {
        let body = get(http, "/metrics").await.1;
        body.contains(delivered).then_some(body)
    })
    .await;
    for needle in [
        "smarthost_messages_received_total 1",
        delivered,
        "smarthost_upstream_up{upstream=\"maildir\"} 1",
        "smarthost_delivery_duration_seconds_bucket",
        "# TYPE smarthost_connections_active gauge",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_busy_metrics_port_stops_the_start_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path())
        .toml(&format!(
            "[delivery]\nmode = \"passthrough\"\n[metrics]\nlisten = \"{}\"\n",
            taken.local_addr().unwrap()
        ))
        .load();
    let err = smarthost::start(Arc::new(config))
        .await
        .err()
        .expect("must not start")
        .to_string();
    assert!(
        err.contains("for metrics") && err.contains("\"off\""),
        "{err}"
    );
}

/// A relay whose `[metrics] password_file` holds `s3cret` (with a trailing newline, which
/// is not part of the password).
async fn relay_with_password() -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics-password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[metrics]\npassword_file = \"{}\"\n",
        file.display()
    ));
    Relay::start(config, dir).await
}

fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

#[tokio::test]
async fn a_password_file_guards_metrics_but_not_the_probes() {
    let mut relay = relay_with_password().await;
    let http = relay.metrics_addr().expect("metrics listen is configured");

    let anonymous = http_request(http, "GET", "/metrics", &[]).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(
        anonymous.header("WWW-Authenticate"),
        Some("Basic realm=\"smarthost\", charset=\"UTF-8\"")
    );
    assert!(!anonymous.body.contains("smarthost_"), "{anonymous:?}");

    let wrong = basic("admin:s3cret\n");
    let wrong = http_request(http, "GET", "/metrics", &[("Authorization", &wrong)]).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let other_user = basic("root:s3cret");
    let other_user = http_request(http, "GET", "/metrics", &[("Authorization", &other_user)]).await;
    assert_eq!(other_user.status, 401, "{other_user:?}");
    let unknown_path = http_request(http, "GET", "/nope", &[]).await;
    assert_eq!(unknown_path.status, 401, "{unknown_path:?}");

    let right = basic("admin:s3cret");
    let right = http_request(http, "GET", "/metrics", &[("Authorization", &right)]).await;
    assert_eq!(right.status, 200, "{right:?}");
    assert!(
        right
            .body
            .contains("smarthost_upstream_up{upstream=\"maildir\"} 1"),
        "{}",
        right.body
    );

    assert_eq!(get(http, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(http, "/readyz").await, (200, "ready\n".into()));
    relay.shutdown().await;
}

#[tokio::test]
async fn head_answers_with_the_header_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(TestConfig::new(dir.path()), dir).await;
    let http = relay.metrics_addr().expect("metrics listen is configured");

    let head = http_request(http, "HEAD", "/healthz", &[]).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("Content-Length"), Some("3"), "{head:?}");
    assert_eq!(head.body, "");
    let head = http_request(http, "HEAD", "/metrics", &[]).await;
    assert_eq!(head.status, 200, "{head:?}");
    relay.shutdown().await;
}

#[tokio::test]
async fn methods_other_than_get_and_head_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(TestConfig::new(dir.path()), dir).await;
    let http = relay.metrics_addr().expect("metrics listen is configured");

    for method in ["POST", "PUT", "DELETE"] {
        let response = http_request(http, method, "/metrics", &[("Content-Length", "0")]).await;
        assert_eq!(response.status, 405, "{method}: {response:?}");
        assert_eq!(response.header("Allow"), Some("GET, HEAD"), "{method}");
    }
    let unknown = get(http, "/nope").await;
    assert_eq!(unknown.0, 404);
    assert!(
        unknown.1.contains("/metrics"),
        "404 names the paths: {unknown:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn requests_share_one_keep_alive_connection() {
    let mut relay = relay_with_password().await;
    let http = relay.metrics_addr().expect("metrics listen is configured");
    let auth = basic("admin:s3cret");

    let mut connection = HttpConnection::open(http).await;
    let first = connection.request("GET", "/healthz", &[]).await;
    assert_eq!((first.status, first.body.as_str()), (200, "ok\n"));
    let head = connection.request("HEAD", "/readyz", &[]).await;
    assert_eq!(head.status, 200, "{head:?}");
    let second = connection
        .request("GET", "/metrics", &[("Authorization", &auth)])
        .await;
    assert_eq!(second.status, 200, "{second:?}");
    assert!(second.body.contains("# TYPE"), "{}", second.body);
    let refused = connection.request("GET", "/metrics", &[]).await;
    assert_eq!(
        refused.status, 401,
        "a 401 keeps the connection: {refused:?}"
    );
    let third = connection.request("GET", "/readyz", &[]).await;
    assert_eq!((third.status, third.body.as_str()), (200, "ready\n"));
    relay.shutdown().await;
}

#[test]
fn an_empty_or_unreadable_password_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing");
    for (file, want) in [(&empty, "is empty"), (&missing, "cannot read")] {
        let path = TestConfig::new(dir.path())
            .toml(&format!(
                "[metrics]\npassword_file = \"{}\"\n",
                file.display()
            ))
            .write();
        let err = smarthost::config::load(&ConfigSource::File(path), &[])
            .expect_err("the configuration must be refused")
            .to_string();
        assert!(
            err.contains("`metrics.password_file`") && err.contains(want),
            "{err}"
        );
        assert!(
            err.contains("remove password_file"),
            "says what to do: {err}"
        );
    }
}
