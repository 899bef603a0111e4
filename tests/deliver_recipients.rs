//! Recipient caps per transaction, end to end over real sockets (issue 21): the relay
//! runs in-process, a scripted fake upstream caps the recipients it takes per
//! transaction and answers `452 4.5.3` or `552 5.5.3` beyond the cap.
//!
//! Queue mode runs with `retry_base = "1h"`: a recipient that waited for a back-off
//! would keep the message in the spool far past [`support::HANG_GUARD`], so "the spool drains"
//! proves that no recipient was deferred. Nothing here asserts on timing.

pub mod fake_upstream;
pub mod support;

use std::collections::HashMap;

use fake_upstream::{FakeUpstream, Mode, Received, Verb};
use smarthost::spool::Spool;
use support::config::upstream;
use support::{Relay, start_relay, wait_for};

/// Any deferral would wait an hour.
const NO_RETRY_SOON: &str = "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\n";

const TOO_MANY_452: &str = "452 4.5.3 Too many recipients";
const TOO_MANY_552: &str = "552 5.5.3 Too many recipients";

async fn capped_fake(cap: usize, reply: &str) -> FakeUpstream {
    FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .rcpt_cap(cap, reply)
        .start()
        .await
}

fn recipients(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("r{i}@example.net")).collect()
}

/// Submit one message to `to`; returns the relay's final reply code and text.
async fn submit(relay: &Relay, to: &[String]) -> (u16, String) {
    let mut client = relay.client().await;
    let content = format!(
        "From: <app@example.com>\r\nTo: <{}>\r\nSubject: many\r\n\r\nOne message, {} recipients.\r\n",
        to[0],
        to.len()
    );
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let reply = client
        .send_message("app@example.com", &to, content.as_bytes())
        .await;
    client.expect("QUIT", 221).await;
    (reply.code, reply.text())
}

fn queued(relay: &Relay) -> Vec<(String, smarthost::spool::Entry)> {
    let dir = &relay.config().spool.dir;
    // Passthrough mode creates the spool only when it needs it.
    if !dir.exists() {
        return Vec::new();
    }
    Spool::inspect(dir)
        .expect("read the spool")
        .into_iter()
        .map(|(id, e)| (id.to_string(), e))
        .collect()
}

/// The spool is empty: every recipient is final, none waits for a retry.
async fn wait_until_queue_empty(relay: &Relay) {
    wait_for(
        "the queue to drain (a deferred recipient would wait 1 h)",
        || async {
            let left = queued(relay);
            left.is_empty().then_some(())
        },
    )
    .await;
}

/// How often each recipient was delivered, over all accepted messages.
fn copies(messages: &[Received]) -> HashMap<String, usize> {
    let mut count = HashMap::new();
    for m in messages {
        for r in &m.rcpts {
            *count.entry(r.clone()).or_default() += 1;
        }
    }
    count
}

fn assert_each_once(fake: &FakeUpstream, want: &[String]) {
    let messages = fake.messages();
    assert!(
        messages.iter().all(|m| !m.mail_from.starts_with("<>")),
        "no bounce: {:?}",
        messages.iter().map(|m| &m.mail_from).collect::<Vec<_>>()
    );
    let copies = copies(&messages);
    assert_eq!(copies.len(), want.len(), "recipients delivered");
    for r in want {
        assert_eq!(copies.get(r), Some(&1), "{r} must get exactly one copy");
    }
}

fn rcpt_lines(fake: &FakeUpstream) -> usize {
    fake.verbs().iter().filter(|v| *v == "RCPT").count()
}

fn mail_lines(fake: &FakeUpstream) -> usize {
    fake.verbs().iter().filter(|v| *v == "MAIL").count()
}

#[tokio::test]
async fn a_thousand_recipients_go_in_transactions_of_the_default_100() {
    let fake = capped_fake(100, TOO_MANY_452).await;
    let mut relay = start_relay(&format!(
        "{NO_RETRY_SOON}{}",
        upstream("capped", &fake.plain_url(), "")
    ))
    .await;
    let to = recipients(1000);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");

    wait_until_queue_empty(&relay).await;
    assert_each_once(&fake, &to);
    let messages = fake.messages();
    assert_eq!(messages.len(), 10);
    assert!(messages.iter().all(|m| m.rcpts.len() == 100));
    // Split up front: no recipient was refused, none sent twice, one connection.
    assert_eq!(rcpt_lines(&fake), 1000);
    assert_eq!(mail_lines(&fake), 10);
    assert_eq!(fake.connections(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_server_taking_fewer_than_max_recipients_gets_the_rest_at_once_after_its_452() {
    let fake = capped_fake(100, TOO_MANY_452).await;
    let mut relay = start_relay(&format!(
        "{NO_RETRY_SOON}{}",
        upstream("capped", &fake.plain_url(), "max_recipients = 1000")
    ))
    .await;
    let to = recipients(1000);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");

    wait_until_queue_empty(&relay).await;
    assert_each_once(&fake, &to);
    let messages = fake.messages();
    assert_eq!(messages.len(), 10, "100 per transaction");
    // The first transaction offers all 1,000 (900 get 452); the relay then sends what
    // the server took per transaction: 9 more transactions of 100, on the same
    // connection, in the same attempt.
    assert_eq!(rcpt_lines(&fake), 1000 + 900);
    assert_eq!(mail_lines(&fake), 10);
    assert_eq!(fake.connections(), 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_452_after_two_of_five_delivers_each_recipient_once_in_queue_mode() {
    let fake = capped_fake(2, TOO_MANY_452).await;
    let mut relay = start_relay(&format!(
        "{NO_RETRY_SOON}{}",
        upstream("capped", &fake.plain_url(), "")
    ))
    .await;
    let to = recipients(5);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");

    wait_until_queue_empty(&relay).await;
    assert_each_once(&fake, &to);
    let rcpts: Vec<Vec<String>> = fake.messages().into_iter().map(|m| m.rcpts).collect();
    assert_eq!(
        rcpts,
        [&to[0..2], &to[2..4], &to[4..5]],
        "2, then 2, then 1: each transaction takes what the server took"
    );
    // 5 offered, 3 refused with 452 and offered again at once: 2 + 1.
    assert_eq!(rcpt_lines(&fake), 5 + 2 + 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_452_after_two_of_five_in_passthrough_answers_250_once() {
    let fake = capped_fake(2, TOO_MANY_452).await;
    let mut relay = start_relay(&format!(
        "[delivery]\nmode = \"passthrough\"\n{}",
        upstream("capped", &fake.plain_url(), "")
    ))
    .await;
    let to = recipients(5);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");
    assert_each_once(&fake, &to);
    assert_eq!(fake.messages().len(), 3);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_552_too_many_recipients_goes_in_the_next_transaction_and_is_not_bounced() {
    let fake = capped_fake(2, TOO_MANY_552).await;
    let mut relay = start_relay(&format!(
        "{NO_RETRY_SOON}{}",
        upstream("capped", &fake.plain_url(), "")
    ))
    .await;
    let to = recipients(5);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");

    wait_until_queue_empty(&relay).await;
    // Only the three messages: no DSN to app@example.com.
    assert_eq!(fake.messages().len(), 3);
    assert_each_once(&fake, &to);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_server_that_takes_no_recipient_is_an_ordinary_deferral_without_a_loop() {
    for refusal in [TOO_MANY_452, TOO_MANY_552] {
        let fake = capped_fake(0, refusal).await;
        let mut relay = start_relay(&format!(
            "{NO_RETRY_SOON}{}",
            upstream("capped", &fake.plain_url(), "")
        ))
        .await;
        let to = recipients(5);
        let (code, text) = submit(&relay, &to).await;
        assert_eq!(code, 250, "{text}");

        let state = wait_for("the first attempt's outcome in the spool", || async {
            queued(&relay)
                .into_iter()
                .next()
                .map(|(_, e)| e.state)
                .filter(|s| s.attempts >= 1)
        })
        .await;
        assert_eq!(state.attempts, 1, "{refusal}");
        assert!(
            state
                .rcpts
                .iter()
                .all(|r| *r == smarthost::spool::RcptState::Pending),
            "{refusal}: deferred, never bounced: {state:?}"
        );
        assert!(state.last_error.contains(refusal), "{refusal}: {state:?}");
        // One transaction, each recipient offered once: no loop on the refusal.
        assert_eq!(rcpt_lines(&fake), 5, "{refusal}");
        assert_eq!(mail_lines(&fake), 1, "{refusal}");
        assert!(fake.messages().is_empty());
        relay.shutdown().await;
    }
}

#[tokio::test]
async fn a_421_between_two_transactions_of_a_message_continues_on_a_new_connection() {
    // The server ends the connection at the second MAIL (a per-connection message cap).
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .replies_then(
            Verb::Mail,
            &[
                "250 2.1.0 ok",
                "421 4.7.0 Too many messages for this session",
            ],
        )
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "{NO_RETRY_SOON}{}",
        upstream("capped", &fake.plain_url(), "max_recipients = 2")
    ))
    .await;
    let to = recipients(4);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");

    wait_until_queue_empty(&relay).await;
    assert_each_once(&fake, &to);
    let messages = fake.messages();
    assert_eq!(messages.len(), 2);
    assert_eq!((messages[0].conn, messages[1].conn), (1, 2));
    relay.shutdown().await;
}

#[tokio::test]
async fn recipients_accepted_before_a_later_transaction_fails_are_not_sent_again() {
    // Second MAIL: 421; on the new connection the first MAIL: 421 again. The attempt
    // ends with r1 and r2 delivered; r3 and r4 wait for the retry.
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .replies_then(
            Verb::Mail,
            &[
                "250 2.1.0 ok",
                "421 4.7.0 Too many messages for this session",
                "421 4.7.0 Try again later",
            ],
        )
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "[delivery]\nretry_base = \"200ms\"\nretry_max = \"1s\"\n{}",
        upstream("capped", &fake.plain_url(), "max_recipients = 2")
    ))
    .await;
    let to = recipients(4);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");

    wait_until_queue_empty(&relay).await;
    assert_each_once(&fake, &to);
    let rcpts: Vec<Vec<String>> = fake.messages().into_iter().map(|m| m.rcpts).collect();
    assert_eq!(rcpts, [&to[0..2], &to[2..4]]);
    // r1 and r2 were offered once: the retry sent only r3 and r4.
    for r in &to[0..2] {
        let offered = fake
            .lines()
            .iter()
            .filter(|l| l.text.eq_ignore_ascii_case(&format!("RCPT TO:<{r}>")))
            .count();
        assert_eq!(offered, 1, "{r}");
    }
    relay.shutdown().await;
}

/// One message per connection, as providers cap it: after one message the server
/// answers the next MAIL on the same connection with `reply` (`None`: it closes the
/// connection without a word instead). RSET before that still gets `250`, so the relay
/// only learns at MAIL that the pooled connection is finished.
async fn one_message_per_connection(reply: Option<&str>) {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .messages_per_connection(1, reply)
        .start()
        .await;
    // One connection at a time, so every message after the first gets the pooled one.
    // A breaker that opens at the first counted failure, and a back-off of an hour:
    // a failure counted for the upstream or an attempt counted for the message would
    // leave a message in the spool.
    let mut relay = start_relay(&format!(
        "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\nbreaker_threshold = 1\nbreaker_cooldown = \"1h\"\nbreaker_max_cooldown = \"1h\"\n{}",
        upstream("capped", &fake.plain_url(), "max_connections = 1")
    ))
    .await;
    for n in 1..=3 {
        let to = vec![format!("m{n}@example.net")];
        let (code, text) = submit(&relay, &to).await;
        assert_eq!(code, 250, "{text}");
        wait_until_queue_empty(&relay).await;
        assert_eq!(fake.messages().len(), n, "message {n} delivered");
    }
    let conns: Vec<usize> = fake.messages().iter().map(|m| m.conn).collect();
    assert_eq!(
        conns,
        [1, 2, 3],
        "each message after the first on a new connection"
    );
    assert_eq!(fake.connections(), 3, "no other connection");
    // 3 delivered, and for messages 2 and 3 one MAIL on the finished pooled connection.
    assert_eq!(mail_lines(&fake), 5);
    assert_each_once(
        &fake,
        &["m1@example.net", "m2@example.net", "m3@example.net"].map(String::from),
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_421_at_mail_on_a_reused_connection_reconnects_at_once_without_a_failure() {
    one_message_per_connection(Some("421 4.7.0 Too many messages for this session")).await;
}

#[tokio::test]
async fn a_close_at_mail_on_a_reused_connection_reconnects_at_once_without_a_failure() {
    one_message_per_connection(None).await;
}

#[tokio::test]
async fn a_421_at_mail_on_a_fresh_connection_is_still_a_failure() {
    // The pooled connection's 421 at MAIL is no failure, but the fresh connection
    // answers 421 too, and that counts: an attempt of the message.
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .replies_then(
            Verb::Mail,
            &[
                "250 2.1.0 ok",
                "421 4.7.0 Too many messages for this session",
                "421 4.3.2 busy",
            ],
        )
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\nbreaker_threshold = 1\nbreaker_cooldown = \"1h\"\nbreaker_max_cooldown = \"1h\"\n{}",
        upstream("capped", &fake.plain_url(), "max_connections = 1")
    ))
    .await;
    let (code, text) = submit(&relay, &["m1@example.net".to_owned()]).await;
    assert_eq!(code, 250, "{text}");
    wait_until_queue_empty(&relay).await;
    let (code, text) = submit(&relay, &["m2@example.net".to_owned()]).await;
    assert_eq!(code, 250, "{text}");
    let state = wait_for(
        "the second message's failed attempt in the spool",
        || async {
            queued(&relay)
                .into_iter()
                .next()
                .map(|(_, e)| e.state)
                .filter(|s| s.attempts >= 1)
        },
    )
    .await;
    assert_eq!(state.attempts, 1);
    assert!(state.last_error.contains("4.3.2 busy"), "{state:?}");
    // The pooled connection, then one fresh one: no third connection.
    assert_eq!(fake.connections(), 2);
    assert_eq!(fake.messages().len(), 1);
    relay.shutdown().await;
}

const PASSTHROUGH_RETRY_SOON: &str =
    "[delivery]\nmode = \"passthrough\"\nretry_base = \"200ms\"\nretry_max = \"1s\"\n";

#[tokio::test]
async fn passthrough_one_of_three_refused_answers_250_and_bounces_the_refused_one() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .rcpt_reply_for("r2@example.net", "550 5.1.1 No such user here")
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "[delivery]\nmode = \"passthrough\"\nretry_base = \"1h\"\nretry_max = \"2h\"\n{}",
        upstream("capped", &fake.plain_url(), "")
    ))
    .await;
    let to = recipients(3);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "{text}");

    // The relay's DSN goes to the sender through the same upstream.
    let messages = wait_for("the message and the DSN at the upstream", || async {
        let m = fake.messages();
        (m.len() >= 2).then_some(m)
    })
    .await;
    wait_until_queue_empty(&relay).await;
    assert_eq!(messages.len(), 2, "one copy and one DSN, nothing else");
    assert_eq!(messages[0].rcpts, ["r1@example.net", "r3@example.net"]);
    let dsn = &messages[1];
    assert_eq!(dsn.mail_from, "<>");
    assert_eq!(dsn.rcpts, ["app@example.com"]);
    let text = dsn.text();
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; r2@example.net"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822; r1@"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822; r3@"), "{text}");
    relay.shutdown().await;
}

#[tokio::test]
async fn passthrough_452_after_two_of_five_answers_250_once_and_retries_the_rest_from_the_spool() {
    // Recipients 3 to 5 are deferred once (a 452 that is not about the number of
    // recipients, so it is no reason to go on at once), then accepted.
    let mut builder = FakeUpstream::builder(Mode::Plain).ext("PIPELINING");
    for r in 3..=5 {
        builder = builder.rcpt_replies_then(
            &format!("r{r}@example.net"),
            &["452 4.2.2 Mailbox temporarily over quota"],
        );
    }
    let fake = builder.start().await;
    let mut relay = start_relay(&format!(
        "{PASSTHROUGH_RETRY_SOON}{}",
        upstream("capped", &fake.plain_url(), "")
    ))
    .await;
    let to = recipients(5);
    let (code, text) = submit(&relay, &to).await;
    assert_eq!(code, 250, "the client hears 250 once: {text}");
    assert_eq!(
        fake.messages().len(),
        1,
        "r1 and r2 while the client waited"
    );

    // The three deferred recipients are in the spool, and go from there.
    wait_for("the deferred recipients from the spool", || async {
        (fake.messages().len() >= 2).then_some(())
    })
    .await;
    wait_until_queue_empty(&relay).await;

    // The client reconnects (as a client does after a failure): nothing is resent.
    let mut again = relay.client().await;
    again.expect("NOOP", 250).await;
    again.expect("QUIT", 221).await;

    let rcpts: Vec<Vec<String>> = fake.messages().into_iter().map(|m| m.rcpts).collect();
    assert_eq!(rcpts, [&to[0..2], &to[2..5]]);
    assert_each_once(&fake, &to);
    // r1 and r2 were offered once: the spooled retry sent only r3 to r5.
    for r in &to[0..2] {
        let offered = fake
            .lines()
            .iter()
            .filter(|l| l.text.eq_ignore_ascii_case(&format!("RCPT TO:<{r}>")))
            .count();
        assert_eq!(offered, 1, "{r}");
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn passthrough_with_no_recipient_accepted_passes_the_upstreams_reply_on() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .reply(Verb::Rcpt, "451 4.3.0 Try again later")
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "{PASSTHROUGH_RETRY_SOON}{}",
        upstream("capped", &fake.plain_url(), "")
    ))
    .await;
    let (code, text) = submit(&relay, &recipients(2)).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("Try again later"), "{text}");
    assert!(
        !relay.config().spool.dir.exists(),
        "the client keeps the message; the spool is not even created"
    );
    relay.shutdown().await;
}
