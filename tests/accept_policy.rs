//! `[policy]` over real SMTP (issue 13): allowed senders at MAIL FROM and for the From
//! address after DATA, allowed recipients at RCPT, each refusal a `550 5.7.1` naming the
//! rule; `redirect_all_to` with the original recipients in `X-Original-To`; a reload
//! that adds a policy. Every wait has its own deadline.

pub mod support;

use std::sync::Arc;

use support::{STRICT_HEAD, SmtpClient, TestConfig, start_relay};

const POLICY: &str = "[policy]\nallowed_senders = [\"*@example.com\", \"*@billing.example.com\"]\nallowed_recipients = [\"*@example.net\", \"*@partner.test\"]\n";

fn message(from: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@client.test>\r\nSubject: {subject}\r\n\r\nbody\r\n"
    )
}

fn header_values(content: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(content);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    head.lines()
        .filter_map(|l| {
            let (field, value) = l.split_once(':')?;
            field
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_refusal_names_its_rule_at_the_earliest_point() {
    let mut relay = start_relay(POLICY).await;
    let mut client = relay.client().await;

    let reply = client
        .expect_esc("MAIL FROM:<app@elsewhere.test>", 550, "5.7.1")
        .await;
    assert!(
        reply.text().contains("policy.allowed_senders"),
        "{}",
        reply.text()
    );

    client
        .expect("MAIL FROM:<App@Billing.Example.com>", 250)
        .await;
    let reply = client
        .expect_esc("RCPT TO:<someone@customer.test>", 550, "5.7.1")
        .await;
    assert!(
        reply.text().contains("<someone@customer.test>")
            && reply.text().contains("policy.allowed_recipients"),
        "{}",
        reply.text()
    );
    client.expect("RCPT TO:<user@example.net>", 250).await;
    client.expect("DATA", 354).await;
    client
        .send(format!("{}.\r\n", message("boss@elsewhere.test", "from")).as_bytes())
        .await;
    let reply = client.expect_reply_esc(550, "5.7.1").await;
    assert!(
        reply.text().contains("From address <boss@elsewhere.test>")
            && reply.text().contains("policy.allowed_senders"),
        "{}",
        reply.text()
    );

    // A null sender is judged by its From address alone.
    let reply = client
        .send_message(
            "",
            &["user@partner.test"],
            message("bounces@example.com", "allowed").as_bytes(),
        )
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.expect("QUIT", 221).await;

    let delivered = relay.finish(1).await;
    assert_eq!(
        header_values(&delivered[0].bytes, "Subject"),
        ["allowed"],
        "only the allowed message went out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_relay_sends_everything_to_one_address_and_keeps_the_recipients() {
    let mut relay = start_relay("[policy]\nredirect_all_to = \"staging@example.com\"\n").await;
    let mut client = relay.client().await;
    let reply = client
        .send_message(
            "app@example.com",
            &["first@customer.test", "second@customer.test"],
            format!("{STRICT_HEAD}Subject: staging\r\n\r\nbody\r\n").as_bytes(),
        )
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.expect("QUIT", 221).await;

    let delivered = relay.finish(1).await;
    let bytes = &delivered[0].bytes;
    assert_eq!(
        header_values(bytes, "Delivered-To"),
        ["staging@example.com"],
        "one copy, to the redirect address only"
    );
    assert_eq!(
        header_values(bytes, "X-Original-To"),
        ["first@customer.test", "second@customer.test"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_a_policy_applies_to_new_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let config = |extra: &str| {
        Arc::new(
            TestConfig::new(dir.path())
                .maildir(&outbox)
                .toml(extra)
                .load(),
        )
    };
    let relay = smarthost::start(config("")).await.unwrap();
    let addr = relay.local_addrs()[0];

    let mut before = SmtpClient::connect(addr).await;
    before.greeting().await;
    before.expect("EHLO client.test", 250).await;
    before.expect("MAIL FROM:<app@elsewhere.test>", 250).await;
    before.expect("RSET", 250).await;

    let notes = relay.reload((*config(POLICY)).clone()).await.unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let mut after = SmtpClient::connect(addr).await;
    after.greeting().await;
    after.expect("EHLO client.test", 250).await;
    after
        .expect_esc("MAIL FROM:<app@elsewhere.test>", 550, "5.7.1")
        .await;
    after.expect("QUIT", 221).await;
    before.expect("QUIT", 221).await;
    support::within("shutdown", relay.shutdown()).await;
}
