//! The metrics and health endpoints of a running relay, over real sockets.

use std::sync::Arc;
use std::time::Duration;

use smarthost::config::{ConfigSource, load};
use smarthost::ops::send::{SendRequest, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_after_a_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("c.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[spool]\ndir = \"{0}/spool\"\nmax_disk_usage = 100\n[metrics]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"box\"\nurl = \"maildir:{0}/out\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let config = load(&ConfigSource::File(config_path), &[]).unwrap();
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

    // Delivery happens after the 250 in queue mode; wait for the counter (bounded).
    let mut body = String::new();
    for _ in 0..100 {
        body = get(http, "/metrics").await.1;
        if body.contains("smarthost_messages_delivered_total{upstream=\"box\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for needle in [
        "smarthost_messages_received_total 1",
        "smarthost_messages_delivered_total{upstream=\"box\"} 1",
        "smarthost_upstream_up{upstream=\"box\"} 1",
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
    let config_path = dir.path().join("c.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[delivery]\nmode = \"passthrough\"\n[metrics]\nlisten = \"{}\"\n[[upstream]]\nurl = \"maildir:{}/out\"\n",
            taken.local_addr().unwrap(),
            dir.path().display()
        ),
    )
    .unwrap();
    let config = load(&ConfigSource::File(config_path), &[]).unwrap();
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
