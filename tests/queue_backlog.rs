//! A backlog released when its upstream works again (issue 12): it drains oldest
//! first, and mail accepted meanwhile takes turns with it instead of waiting behind the
//! whole backlog.
//!
//! The scripted upstream greets with `421` while "down"; the relay's breaker opens and
//! parks the mail; one probe after the cool-down finds the upstream back and releases
//! everything at once. One upstream connection, so deliveries go one after another and
//! their order is the order the relay chose. Every wait has its own deadline.

pub mod fake_upstream;
pub mod support;

use std::time::Duration;

use fake_upstream::{FakeUpstream, Fault, Mode};
use support::{STRICT_HEAD, SmtpClient, start_relay, wait_for};

const BACKLOG: usize = 30;

fn subject(content: &[u8]) -> String {
    String::from_utf8_lossy(content)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        .unwrap_or_default()
}

async fn submit(client: &mut SmtpClient<tokio::net::TcpStream>, subject: &str) {
    let content = format!("{STRICT_HEAD}Subject: {subject}\r\n\r\nbody\r\n");
    let reply = client
        .send_message("app@example.com", &["user@example.net"], content.as_bytes())
        .await;
    assert_eq!(reply.code, 250, "{subject}: {}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_backlog_drains_oldest_first_and_new_mail_takes_turns_with_it() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .start()
        .await;
    fake.set_healthy(false);
    // Back-off in hours: only the breaker's probe can release the mail.
    let relay = start_relay(&format!(
        "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\nbreaker_threshold = 2\n\
         breaker_cooldown = \"2s\"\n\n\
         [[upstream]]\nname = \"down\"\nurl = \"{}\"\nmax_connections = 1\ntimeout = \"5s\"\n",
        fake.plain_url()
    ))
    .await;

    let mut client = SmtpClient::connect(relay.addr()).await;
    client.greeting().await;
    client.expect("EHLO backlog.test", 250).await;
    for i in 0..BACKLOG {
        submit(&mut client, &format!("backlog {i:02}")).await;
    }
    // The first messages were tried against the 421 and opened the breaker; the others
    // were skipped by it. All of them are parked until a probe finds the upstream back.
    wait_for("the breaker open", || async {
        (fake.connections() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fake.messages().is_empty());

    // The upstream returns, taking 50 ms per message (so the backlog cannot drain
    // before the new mail is in); new mail arrives right after the release.
    fake.set_fault(Some(Fault::SlowEndOfData(Duration::from_millis(50))));
    fake.set_healthy(true);
    wait_for("the first backlog delivery", || async {
        (!fake.messages().is_empty()).then_some(())
    })
    .await;
    for i in 0..3 {
        submit(&mut client, &format!("new {i}")).await;
    }
    client.expect("QUIT", 221).await;

    let order: Vec<String> = wait_for("everything delivered", || async {
        let m = fake.messages();
        (m.len() >= BACKLOG + 3).then(|| m.iter().map(|m| subject(&m.content)).collect())
    })
    .await;
    assert_eq!(order.len(), BACKLOG + 3, "{order:?}");

    // New mail takes turns with the backlog: it is not delivered after all of it.
    let last_new = order.iter().rposition(|s| s.starts_with("new")).unwrap();
    let last_backlog = order
        .iter()
        .rposition(|s| s.starts_with("backlog"))
        .unwrap();
    assert!(
        last_new < last_backlog,
        "new mail waited for the whole backlog: {order:?}"
    );
    // After the release the backlog goes oldest first. Two workers share the one
    // connection, so neighbours may swap, and a message that was being tried at the
    // release comes after the others; the messages that came due for the probe
    // itself, before the release, go first and are left out. Measured in inversions
    // (pairs out of order): a random order has half of all pairs inverted.
    let backlog: Vec<usize> = order
        .iter()
        .filter_map(|s| s.strip_prefix("backlog ")?.parse().ok())
        .collect();
    let released: Vec<usize> = backlog.iter().copied().skip_while(|i| *i != 0).collect();
    assert!(released.len() >= BACKLOG - 4, "{backlog:?}");
    let pairs = released.len() * (released.len() - 1) / 2;
    let inversions: usize = (0..released.len())
        .map(|i| {
            released[i + 1..]
                .iter()
                .filter(|l| **l < released[i])
                .count()
        })
        .sum();
    assert!(
        inversions * 4 <= pairs,
        "not oldest first ({inversions} of {pairs} pairs inverted): {backlog:?}"
    );
}
