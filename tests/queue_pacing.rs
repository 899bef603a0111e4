//! Pacing (issue 12): when accepted mail waits for delivery workers faster than they
//! take it, a new message's `250` is held back (at most 1 s each) and counted in
//! `smarthost_accept_paced_total`; nothing is refused or lost, and once the upstream
//! answers again every message is delivered once.
//!
//! The scripted upstream holds the end of data of every message, so the relay's two
//! workers (one upstream connection) take one message each and the rest waits. Every
//! wait has its own deadline.

pub mod fake_upstream;
pub mod support;

use std::collections::HashSet;

use fake_upstream::{FakeUpstream, Fault, Mode};
use support::{STRICT_HEAD, SmtpClient, http_get, start_relay, wait_for};

/// More than the pacing limit (64 ready messages with two workers) plus the two the
/// workers hold.
const MESSAGES: usize = 70;

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_beyond_the_ready_limit_is_paced_and_all_of_it_delivered() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .start()
        .await;
    fake.set_fault(Some(Fault::HoldEndOfDataAfter(0)));
    let relay = start_relay(&format!(
        "[delivery]\nretry_base = \"1s\"\nretry_max = \"2s\"\n\n\
         [[upstream]]\nname = \"held\"\nurl = \"{}\"\nmax_connections = 1\n\
         timeout = \"5s\"\ndata_timeout = \"60s\"\n",
        fake.plain_url()
    ))
    .await;
    let http = relay.metrics_addr().expect("metrics listener");

    let mut client = SmtpClient::connect(relay.addr()).await;
    client.greeting().await;
    client.expect("EHLO pacing.test", 250).await;
    for i in 0..MESSAGES {
        let content = format!("{STRICT_HEAD}Subject: paced {i}\r\n\r\nmessage {i}\r\n");
        let reply = client
            .send_message("app@example.com", &["user@example.net"], content.as_bytes())
            .await;
        assert_eq!(reply.code, 250, "message {i}: {}", reply.text());
    }
    client.expect("QUIT", 221).await;

    let paced = counter(
        &http_get(http, "/metrics").await.1,
        "smarthost_accept_paced_total",
    );
    assert!(paced >= 1, "no message was paced");
    assert!(
        paced < MESSAGES as u64,
        "{paced} paced: only the ones beyond the limit"
    );

    // The upstream answers again: every message arrives, each once.
    fake.set_fault(None);
    let subjects = wait_for("every message delivered", || async {
        let subjects: Vec<String> = fake
            .messages()
            .iter()
            .filter_map(|m| {
                String::from_utf8_lossy(&m.content)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect();
        (subjects.len() >= MESSAGES).then_some(subjects)
    })
    .await;
    let distinct: HashSet<&String> = subjects.iter().collect();
    assert_eq!(distinct.len(), MESSAGES, "{subjects:?}");
    assert_eq!(subjects.len(), MESSAGES, "a message was delivered twice");
}
