//! Several replicas share each upstream's budget through a real `redis-server`
//! (`[cluster] store`): the combined rate stays within `rate_limit`, `daily_limit` is
//! one count for all that outlives the replicas, and a store that goes away leaves each
//! replica a share of the limits while nothing is lost (issue 15).

pub mod fake_upstream;
pub mod support;

use std::time::Duration;

use fake_upstream::{FakeUpstream, Mode};
use support::config::upstream;
use support::redis::RedisServer;
use support::{Relay, TestConfig, wait_for, wait_for_up_to};

/// A replica named `node` sharing `store`, delivering to `fake` with `limits`.
async fn replica(store: &str, node: &str, fake: &FakeUpstream, limits: &str) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[cluster]\nstore = \"{store}\"\nnode = \"{node}\"\n{}",
        upstream("provider", &fake.plain_url(), limits)
    ));
    Relay::start(config, dir).await
}

async fn send(relay: &Relay, n: usize, tag: &str) {
    let mut c = relay.client().await;
    for i in 0..n {
        let content = format!("From: <app@example.com>\r\nSubject: {tag}-{i}\r\n\r\nhi\r\n");
        c.send_content("app@example.com", &["user@example.net"], &content)
            .await;
    }
    c.expect("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_stay_within_one_rate_limit() {
    let store = RedisServer::start();
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    // 10/s: one message every 100 ms for the whole cluster. Each replica alone would
    // send 10 a second, so without sharing a second would hold about 20.
    let a = replica(&store.url(), "a", &fake, "rate_limit = \"10/s\"").await;
    let b = replica(&store.url(), "b", &fake, "rate_limit = \"10/s\"").await;
    const EACH: usize = 12;
    tokio::join!(send(&a, EACH, "a"), send(&b, EACH, "b"));
    wait_for_up_to(
        "every message delivered",
        Duration::from_secs(30),
        || async { (fake.messages().len() >= 2 * EACH).then_some(()) },
    )
    .await;
    let mut arrivals: Vec<_> = fake.messages().iter().map(|m| m.at).collect();
    assert_eq!(arrivals.len(), 2 * EACH, "each message once");
    arrivals.sort();
    // No window of one second holds more than 10 (one more for the edges of the
    // window: arrivals are seen a little after they were sent).
    let most = arrivals
        .iter()
        .enumerate()
        .map(|(i, start)| {
            arrivals[i..]
                .iter()
                .take_while(|t| **t < *start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most <= 11,
        "{most} messages within one second: the replicas did not share the rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_limit_is_one_count_for_all_replicas_and_outlives_them() {
    let store = RedisServer::start();
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let limits = "daily_limit = 3";
    let mut a = replica(&store.url(), "a", &fake, limits).await;
    let mut b = replica(&store.url(), "b", &fake, limits).await;
    send(&a, 2, "a").await;
    send(&b, 2, "b").await;
    wait_for("three messages delivered", || async {
        (fake.messages().len() >= 3).then_some(())
    })
    .await;
    // The fourth is held by the shared count: some replica sees no room left today.
    let exhausted = |relay: &Relay| {
        relay
            .status()
            .upstreams
            .iter()
            .any(|u| u.daily_left == Some(0))
    };
    wait_for("a replica holding the fourth message", || async {
        (exhausted(&a) || exhausted(&b)).then_some(())
    })
    .await;
    assert_eq!(fake.messages().len(), 3);
    a.shutdown().await;
    b.shutdown().await;

    // New replicas (a restart with new spools) find today's count in the store.
    let c = replica(&store.url(), "c", &fake, limits).await;
    send(&c, 1, "c").await;
    wait_for("the new replica holding its message", || async {
        exhausted(&c).then_some(())
    })
    .await;
    assert_eq!(fake.messages().len(), 3, "the daily limit was forgotten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_store_a_replica_uses_its_share_and_loses_nothing() {
    let mut store = RedisServer::start();
    let port = store.port();
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let relay = replica(&store.url(), "a", &fake, "rate_limit = \"20/s\"").await;
    let metrics = relay.metrics_addr().unwrap();
    let store_up = |value: &'static str| async move {
        let body = support::http_get(metrics, "/metrics").await.1;
        body.lines()
            .any(|l| l == format!("smarthost_cluster_store_up {value}"))
            .then_some(())
    };
    send(&relay, 2, "before").await;
    wait_for("two delivered through the store", || async {
        (fake.messages().len() >= 2).then_some(())
    })
    .await;
    wait_for("the store seen up", || store_up("1")).await;

    store.stop();
    send(&relay, 3, "without").await;
    wait_for("the store seen down", || store_up("0")).await;
    wait_for("the messages delivered on the local share", || async {
        (fake.messages().len() >= 5).then_some(())
    })
    .await;

    let _store = RedisServer::start_on(port);
    wait_for("the store seen up again", || store_up("1")).await;
    send(&relay, 1, "after").await;
    wait_for("delivered through the store again", || async {
        (fake.messages().len() >= 6).then_some(())
    })
    .await;
    assert_eq!(fake.messages().len(), 6, "each message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opened_by_one_replica_is_honoured_by_the_others() {
    let store = RedisServer::start();
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    fake.set_healthy(false);
    let limits = "";
    let delivery = "[delivery]\nbreaker_threshold = 1\nbreaker_cooldown = \"5m\"\n";
    let replica_with = |node: &'static str| {
        let (store, fake_url) = (store.url(), fake.plain_url());
        async move {
            let dir = tempfile::tempdir().unwrap();
            let config = TestConfig::new(dir.path()).toml(&format!(
                "{delivery}[cluster]\nstore = \"{store}\"\nnode = \"{node}\"\n{}",
                upstream("provider", &fake_url, limits)
            ));
            Relay::start(config, dir).await
        }
    };
    let a = replica_with("a").await;
    let b = replica_with("b").await;
    send(&a, 1, "a").await;
    wait_for("replica a's breaker open", || async {
        (a.status().upstreams[0].state == "open").then_some(())
    })
    .await;
    let tried = fake.connections();
    assert!(tried >= 1);

    // Replica b never tried the upstream itself, yet skips it.
    send(&b, 1, "b").await;
    let queue = wait_for("replica b deferring its message", || async {
        let status = b.status();
        let queue = status.queue.unwrap();
        (!queue.deferred_by_reason.is_empty()).then_some(queue)
    })
    .await;
    assert_eq!(
        queue.deferred_by_reason.into_iter().collect::<Vec<_>>(),
        [("circuit breaker open".to_owned(), 1)]
    );
    assert_eq!(
        fake.connections(),
        tried,
        "replica b connected to an open upstream"
    );
    assert_eq!(b.status().upstreams[0].state, "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_across_replicas() {
    let store = RedisServer::start();
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    // Each message takes a while, so that deliveries overlap.
    fake.set_fault(Some(fake_upstream::Fault::SlowEndOfData(
        Duration::from_millis(300),
    )));
    let limits = "max_connections = 2";
    let a = replica(&store.url(), "a", &fake, limits).await;
    let b = replica(&store.url(), "b", &fake, limits).await;
    const EACH: usize = 6;
    tokio::join!(send(&a, EACH, "a"), send(&b, EACH, "b"));
    wait_for_up_to(
        "every message delivered",
        Duration::from_secs(30),
        || async { (fake.messages().len() >= 2 * EACH).then_some(()) },
    )
    .await;
    assert_eq!(fake.messages().len(), 2 * EACH, "each message once");
    // Each replica alone may use 2; together they must not go over 2 either.
    assert!(
        fake.peak_connections() <= 2,
        "{} connections at once",
        fake.peak_connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_connection_lease_expires_for_the_others() {
    use support::process::Daemon;
    let store = RedisServer::start();
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    // The first message's end of data is never answered: the connection stays in use.
    fake.set_fault(Some(fake_upstream::Fault::HoldEndOfDataAfter(0)));
    // Deliveries may wait for a lease longer than a lease lives.
    let limits = "max_connections = 1\ntimeout = \"30s\"";
    let dir = tempfile::tempdir().unwrap();
    let path = TestConfig::new(dir.path())
        .toml(&format!(
            "[cluster]\nstore = \"{}\"\nnode = \"doomed\"\n{}",
            store.url(),
            upstream("provider", &fake.plain_url(), limits)
        ))
        .write();
    let doomed = tokio::task::spawn_blocking({
        let (path, cwd) = (path.clone(), dir.path().to_owned());
        move || Daemon::start(&path, &cwd)
    })
    .await
    .unwrap();
    let mut c = support::SmtpClient::connect(doomed.addr()).await;
    c.greeting().await;
    c.expect("EHLO client.test", 250).await;
    c.send_content(
        "app@example.com",
        &["user@example.net"],
        "From: <app@example.com>\r\nSubject: held\r\n\r\nhi\r\n",
    )
    .await;
    wait_for("the doomed replica's delivery held", || async {
        (fake.held() == 1).then_some(())
    })
    .await;
    // Killed with its lease: nobody gives it back.
    tokio::task::spawn_blocking(move || doomed.kill())
        .await
        .unwrap();
    fake.set_fault(None);

    let survivor = replica(&store.url(), "survivor", &fake, limits).await;
    send(&survivor, 1, "after").await;
    let lease_ttl = smarthost::cluster::LEASE_TTL;
    wait_for_up_to(
        "the survivor's delivery after the lease expired",
        lease_ttl + Duration::from_secs(15),
        || async { (fake.messages().len() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        support::header(&fake.messages()[0].text(), "Subject").as_deref(),
        Some("after-0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_may_be_reached_over_tls_with_a_private_ca() {
    let cert = support::TestCert::generate();
    let store = RedisServer::start_tls(&cert);
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[cluster]\nstore = \"{}\"\nstore_ca_file = \"{}\"\nnode = \"tls\"\n{}",
        store.tls_url(),
        cert.cert_file().display(),
        upstream("provider", &fake.plain_url(), "daily_limit = 1")
    ));
    let relay = Relay::start(config, dir).await;
    send(&relay, 2, "tls").await;
    // The count in the store holds the second message back.
    wait_for("the daily limit reached through the TLS store", || async {
        let status = relay.status();
        (status.upstreams[0].daily_left == Some(0)).then_some(())
    })
    .await;
    let metrics = support::http_get(relay.metrics_addr().unwrap(), "/metrics")
        .await
        .1;
    assert!(
        metrics.contains("smarthost_cluster_store_up 1"),
        "{metrics}"
    );
    assert_eq!(fake.messages().len(), 1);
}
