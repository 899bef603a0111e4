//! Routes through the whole relay (issue 13): apps submit over SMTP, the route is chosen
//! at MAIL FROM, kept in the spool, and each message lands only on its route's fake
//! upstreams, failing over within the route; the delivery metrics carry the route.
//! Every wait has its own deadline.

pub mod fake_upstream;
pub mod support;

use fake_upstream::{FakeUpstream, Mode};
use support::{start_relay, wait_for};

fn upstream(name: &str, fake: &FakeUpstream, priority: i32) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"{}\"\npriority = {priority}\ntimeout = \"5s\"\n\n",
        fake.plain_url()
    )
}

fn message(from: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@client.test>\r\nSubject: {subject}\r\n\r\nbody\r\n"
    )
}

fn subjects(fake: &FakeUpstream) -> Vec<String> {
    fake.messages()
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(&m.content)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_leaves_through_its_own_route() {
    let start = || FakeUpstream::builder(Mode::Plain).ext("PIPELINING").start();
    let (billing, billing_backup, marketing) = (start().await, start().await, start().await);
    billing.set_healthy(false);
    let relay = start_relay(&format!(
        "{}{}{}[[route]]\nname = \"billing\"\nsenders = [\"*@billing.example.com\"]\nupstreams = [\"billing\", \"billing-backup\"]\n\n[[route]]\nname = \"marketing\"\nsenders = [\"*@news.example.com\"]\nupstreams = [\"marketing\"]\n",
        upstream("billing", &billing, 0),
        upstream("billing-backup", &billing_backup, 10),
        upstream("marketing", &marketing, 0),
    ))
    .await;

    let mut client = relay.client().await;
    for (from, subject) in [
        ("invoices@billing.example.com", "invoice"),
        ("letters@news.example.com", "newsletter"),
    ] {
        let reply = client
            .send_message(
                from,
                &["user@example.net"],
                message(from, subject).as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 250, "{subject}: {}", reply.text());
    }
    let reply = client
        .expect_esc("MAIL FROM:<someone@elsewhere.test>", 550, "5.7.1")
        .await;
    assert!(reply.text().contains("route"), "{}", reply.text());
    client.expect("QUIT", 221).await;

    wait_for("both messages delivered", || async {
        (billing_backup.messages().len() + marketing.messages().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        subjects(&billing_backup),
        ["invoice"],
        "failover within the route"
    );
    assert_eq!(subjects(&marketing), ["newsletter"]);
    assert!(billing.messages().is_empty());

    let metrics_addr = relay.metrics_addr().expect("metrics listen");
    let (_, metrics) = support::http_get(metrics_addr, "/metrics").await;
    for series in [
        "smarthost_messages_delivered_total{upstream=\"billing-backup\",route=\"billing\"}",
        "smarthost_messages_delivered_total{upstream=\"marketing\",route=\"marketing\"}",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "{series} missing:\n{metrics}"
        );
    }
}
