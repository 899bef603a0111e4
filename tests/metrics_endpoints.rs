//! The metrics and health endpoints of a running relay, over real sockets.

pub mod support;

use std::sync::Arc;
use std::time::Duration;

use smarthost::ops::send::{SendRequest, send};
use support::{TestConfig, http_get as get, wait_for};

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
