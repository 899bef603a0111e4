//! Queue mode, end to end: the relay runs in-process on 127.0.0.1:0 and spools every
//! message before its `250`; a scripted fake upstream (plaintext) answers the
//! deliveries. The retry schedule is shortened to fractions of a second so that
//! retries, back-off, expiry and rate budgets play out within a few seconds.
//!
//! Every wait is bounded by [`support::HANG_GUARD`]. Nothing asserts that something is fast; a
//! few checks assert that something was *not faster* than the schedule or budget
//! allows, with generous slack.

pub mod fake_upstream;
pub mod support;

use std::time::{Duration, Instant};

use fake_upstream::{FakeUpstream, Mode, Received, Verb};
use smarthost::spool::Spool;
use support::config::upstream;
use support::{Relay, start_relay, wait_for};

/// First retry after 200 ms, then 400, 800 (±20 %), never more than a second apart.
const QUICK_RETRIES: &str = "[delivery]\nretry_base = \"200ms\"\nretry_max = \"1s\"\n";

/// Submit one message; returns the queue id from `250 2.0.0 queued as ID`. An empty
/// `from` is the null sender.
async fn submit(relay: &Relay, from: &str, to: &[&str], subject: &str) -> String {
    let mut client = relay.client().await;
    let content = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {subject}\r\n\r\nThe body of {subject}.\r\n",
        if from.is_empty() {
            "daemon@example.com"
        } else {
            from
        },
        to[0]
    );
    let reply = client.send_message(from, to, content.as_bytes()).await;
    client.expect("QUIT", 221).await;
    reply.queue_id()
}

/// The ids in the relay's spool, read the way `smarthost queue list` reads it.
fn queued(relay: &Relay) -> Vec<String> {
    Spool::inspect(&relay.config().spool.dir)
        .expect("read the spool")
        .iter()
        .map(|(id, _)| id.to_string())
        .collect()
}

async fn wait_until_queue_empty(relay: &Relay) {
    wait_for("the queue to drain", || async {
        queued(relay).is_empty().then_some(())
    })
    .await;
}

fn subject(m: &Received) -> String {
    let text = m.text();
    text.split("\r\n")
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_owned()
}

fn is_bounce(m: &Received) -> bool {
    m.mail_from.starts_with("<>")
}

/// When the fake read each `RCPT TO:<addr>`.
fn rcpt_times(fake: &FakeUpstream, addr: &str) -> Vec<Instant> {
    let needle = format!("RCPT TO:<{addr}>");
    fake.lines()
        .iter()
        .filter(|l| l.text.eq_ignore_ascii_case(&needle))
        .map(|l| l.at)
        .collect()
}

/// The parts of a `multipart/report` DSN, checked for the RFC 3464 structure:
/// (human-readable text, `message/delivery-status` fields, returned headers).
fn dsn_parts(dsn: &Received) -> (String, String, String) {
    let text = dsn.text();
    let (head, body) = text.split_once("\r\n\r\n").expect("header and body");
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    let content_type = unfolded
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_else(|| panic!("no Content-Type in the DSN:\n{text}"));
    assert!(
        content_type.starts_with("multipart/report; report-type=delivery-status;"),
        "{content_type}"
    );
    let boundary = content_type
        .split("boundary=\"")
        .nth(1)
        .and_then(|b| b.split('"').next())
        .expect("a boundary");
    let delimiter = format!("\r\n--{boundary}");
    let body = format!("\r\n{body}");
    let mut parts: Vec<&str> = body.split(delimiter.as_str()).collect();
    assert_eq!(
        parts.pop().map(str::trim_end),
        Some("--"),
        "closing delimiter:\n{text}"
    );
    assert_eq!(parts.len(), 4, "preamble and three parts:\n{text}");
    let part = |i: usize, ty: &str| {
        let (headers, content) = parts[i]
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("part {i} has no body:\n{text}"));
        assert!(
            headers.contains(&format!("Content-Type: {ty}")),
            "part {i} is not {ty}:\n{text}"
        );
        content.to_owned()
    };
    (
        part(1, "text/plain"),
        part(2, "message/delivery-status"),
        part(3, "text/rfc822-headers"),
    )
}

#[tokio::test]
async fn a_deferred_message_is_retried_with_growing_delays_until_accepted() {
    let busy = "451 4.3.0 mailbox busy, try again";
    let fake = FakeUpstream::builder(Mode::Plain)
        .rcpt_replies_then("later@example.net", &[busy, busy, busy])
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "{QUICK_RETRIES}{}",
        upstream("fake", &fake.plain_url(), "")
    ))
    .await;
    let id = submit(&relay, "app@example.com", &["later@example.net"], "retried").await;

    let delivered = wait_for("the fourth attempt to succeed", || async {
        let m = fake.messages();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_eq!(subject(&delivered[0]), "retried");
    assert_eq!(delivered[0].rcpts, ["later@example.net"]);
    let attempts = rcpt_times(&fake, "later@example.net");
    assert_eq!(attempts.len(), 4, "three refusals, then the delivery");
    // Each wait is at least the back-off's lower bound: base · 2^(n-1) − 20 % jitter.
    for (n, pair) in attempts.windows(2).enumerate() {
        let floor = Duration::from_millis(200 * (1 << n) * 8 / 10);
        let gap = pair[1] - pair[0];
        assert!(
            gap >= floor - Duration::from_millis(10),
            "retry {} came after {gap:?}, before its back-off of at least {floor:?}",
            n + 1
        );
    }
    wait_until_queue_empty(&relay).await;
    assert!(
        !fake.messages().iter().any(is_bounce),
        "no bounce for a delivered message"
    );
    assert!(!queued(&relay).contains(&id));
    relay.shutdown().await;
}

#[tokio::test]
async fn after_max_queue_lifetime_the_sender_gets_a_dsn_and_the_null_sender_none() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .rcpt_reply_for(
            "never@example.net",
            "451 4.4.1 mailbox unavailable, try later",
        )
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "[delivery]\nretry_base = \"200ms\"\nretry_max = \"500ms\"\nmax_queue_lifetime = \"2s\"\n{}",
        upstream("fake", &fake.plain_url(), "")
    ))
    .await;
    let id = submit(&relay, "app@example.com", &["never@example.net"], "doomed").await;
    let null_id = submit(&relay, "", &["never@example.net"], "doomed-null").await;
    assert_eq!(queued(&relay).len(), 2);

    // Both expire; the one bounce is queued and delivered; then the queue is empty.
    wait_for("the DSN", || async {
        fake.messages().iter().any(is_bounce).then_some(())
    })
    .await;
    wait_until_queue_empty(&relay).await;
    let received = fake.messages();
    let bounces: Vec<&Received> = received.iter().filter(|m| is_bounce(m)).collect();
    assert_eq!(
        bounces.len(),
        1,
        "exactly one DSN: none for the null-sender message\n{received:#?}"
    );
    assert_eq!(received.len(), 1, "nothing reached never@: {received:#?}");
    let dsn = bounces[0];
    assert_eq!(
        dsn.rcpts,
        ["app@example.com"],
        "the DSN goes to the envelope sender"
    );
    let text = dsn.text();
    assert!(
        text.contains("\r\nAuto-Submitted: auto-replied\r\n"),
        "{text}"
    );
    let (human, status, headers) = dsn_parts(dsn);
    assert!(human.contains("never@example.net"), "{human}");
    assert!(status.contains("Reporting-MTA: dns; "), "{status}");
    assert!(
        status.contains(&format!("X-Smarthost-Queue-ID: {id}")),
        "{status}"
    );
    assert!(!status.contains(&null_id), "{status}");
    assert!(
        status.contains(
            "\r\nFinal-Recipient: rfc822; never@example.net\r\nAction: failed\r\nStatus: 5.4.1\r\n"
        ),
        "{status}"
    );
    assert!(
        status.contains("Diagnostic-Code: smtp; ") && status.contains("451 4.4.1"),
        "the upstream's last answer is the diagnostic: {status}"
    );
    assert!(status.contains("gave up after"), "{status}");
    assert!(headers.contains("Subject: doomed\r\n"), "{headers}");
    assert!(
        !text.contains("The body of doomed"),
        "only the headers are returned"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_partial_delivery_retries_only_the_pending_recipient_and_bounces_the_failed_one() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .rcpt_replies_then("b@example.net", &["451 4.2.1 mailbox busy"])
        .rcpt_reply_for("c@example.net", "550 5.1.1 no such user")
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "{QUICK_RETRIES}{}",
        upstream("fake", &fake.plain_url(), "")
    ))
    .await;
    submit(
        &relay,
        "app@example.com",
        &["a@example.net", "b@example.net", "c@example.net"],
        "partial",
    )
    .await;

    wait_for("a's and b's deliveries and c's DSN", || async {
        (fake.messages().len() >= 3).then_some(())
    })
    .await;
    wait_until_queue_empty(&relay).await;
    let received = fake.messages();
    assert_eq!(received.len(), 3, "{received:#?}");
    let (bounces, mail): (Vec<&Received>, Vec<&Received>) =
        received.iter().partition(|m| is_bounce(m));
    let rcpts: Vec<&[String]> = mail.iter().map(|m| m.rcpts.as_slice()).collect();
    assert_eq!(
        rcpts,
        [["a@example.net"], ["b@example.net"]],
        "a at once, b on the retry"
    );
    assert!(mail.iter().all(|m| subject(m) == "partial"));
    assert_eq!(
        rcpt_times(&fake, "a@example.net").len(),
        1,
        "a is not sent twice"
    );
    assert_eq!(rcpt_times(&fake, "b@example.net").len(), 2);
    assert_eq!(
        rcpt_times(&fake, "c@example.net").len(),
        1,
        "c is not retried"
    );

    assert_eq!(bounces.len(), 1);
    assert_eq!(bounces[0].rcpts, ["app@example.com"]);
    let (_, status, headers) = dsn_parts(bounces[0]);
    assert!(
        status.contains(
            "\r\nFinal-Recipient: rfc822; c@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{status}"
    );
    assert_eq!(
        status.matches("Final-Recipient:").count(),
        1,
        "only c failed: {status}"
    );
    assert!(headers.contains("Subject: partial\r\n"), "{headers}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_quota_reply_defers_instead_of_bouncing() {
    let quota = "554 5.7.1 Daily sending quota exceeded, try again later";
    let fake = FakeUpstream::builder(Mode::Plain)
        .replies_then(Verb::EndOfData, &[quota, quota])
        .start()
        .await;
    let mut relay = start_relay(&format!(
        "{QUICK_RETRIES}{}",
        upstream("fake", &fake.plain_url(), "")
    ))
    .await;
    submit(
        &relay,
        "app@example.com",
        &["user@example.net"],
        "throttled",
    )
    .await;
    wait_for("delivery after the quota replies", || async {
        (!fake.messages().is_empty()).then_some(())
    })
    .await;
    wait_until_queue_empty(&relay).await;
    let received = fake.messages();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert!(!is_bounce(&received[0]));
    assert_eq!(subject(&received[0]), "throttled");
    assert_eq!(
        fake.verbs().iter().filter(|v| *v == "DATA").count(),
        3,
        "two throttled attempts, then the delivery"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_mail_and_releases_it_within_the_budget() {
    const N: usize = 6;
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let mut relay = start_relay(&upstream("fake", &fake.plain_url(), "rate_limit = \"2/s\"")).await;
    let mut client = relay.client().await;
    for i in 0..N {
        let content = format!("Subject: rate-{i}\r\n\r\nbody\r\n");
        let reply = client
            .send_message("app@example.com", &["user@example.net"], content.as_bytes())
            .await;
        reply.queue_id();
    }
    client.expect("QUIT", 221).await;

    wait_for("every held message released", || async {
        (fake.messages().len() >= N).then_some(())
    })
    .await;
    wait_until_queue_empty(&relay).await;
    let mut received = fake.messages();
    assert_eq!(received.len(), N, "each message once: {received:#?}");
    assert!(!received.iter().any(is_bounce), "held mail is not failed");
    let mut subjects: Vec<String> = received.iter().map(subject).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        (0..N).map(|i| format!("rate-{i}")).collect::<Vec<_>>()
    );
    // 2/s spread evenly: one every 500 ms, so the sixth cannot arrive before 2.5 s after
    // the first. Half of that is asserted, so scheduling noise cannot matter.
    received.sort_by_key(|m| m.at);
    let span = received[N - 1].at - received[0].at;
    assert!(
        span >= Duration::from_millis(1250),
        "{N} messages within {span:?}: faster than 2/s allows"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_limit_keeps_the_second_message_queued() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let mut relay = start_relay(&upstream("fake", &fake.plain_url(), "daily_limit = 1")).await;
    let first = submit(&relay, "app@example.com", &["user@example.net"], "daily-1").await;
    wait_for("the first message", || async {
        (!fake.messages().is_empty()).then_some(())
    })
    .await;
    let second = submit(&relay, "app@example.com", &["user@example.net"], "daily-2").await;
    wait_for("the second message held", || async {
        let entries = Spool::inspect(&relay.config().spool.dir).ok()?;
        let (_, held) = entries.iter().find(|(id, _)| id.to_string() == second)?;
        held.state.last_error.contains("budget").then_some(())
    })
    .await;

    let config = relay.config_path().display().to_string();
    let list =
        support::process::smarthost_async(&["queue", "list", "-c", &config], relay.temp_dir())
            .await;
    assert_eq!(list.code, Some(0), "{list:?}");
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{list:?}");
    assert!(lines[0].starts_with(&second), "{list:?}");
    assert!(
        lines[0].contains("attempts 0"),
        "held, not a failed attempt: {list:?}"
    );
    assert!(lines[0].contains("sending budget used up"), "{list:?}");
    assert_eq!(lines[1], "1 message(s) queued");
    assert!(!list.stdout.contains(&first), "{list:?}");
    let received = fake.messages();
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(subject(&received[0]), "daily-1");
    relay.shutdown().await;
}
