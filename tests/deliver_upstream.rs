//! Delivery through SMTP upstreams, end to end: the relay runs in-process on
//! 127.0.0.1:0, a client submits with `smarthost::ops::send`, and scripted fake
//! upstreams (real rustls, rcgen certificates) record what reached them. Delivery is
//! passthrough: the client's reply to the message is the outcome of the walk.

pub mod fake_upstream;
pub mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fake_upstream::pki::{self, TestCa};
use fake_upstream::{FakeUpstream, Greeting, Mode, Verb};
use smarthost::RelayHandle;
use smarthost::deliver::client::ClientError;
use smarthost::ops::send::{SendError, SendRequest, send};
use smarthost::proto::Response;
use support::config::upstream;
use support::{HOSTNAME, TestConfig, free_port};

struct Relay {
    handle: RelayHandle,
    addr: SocketAddr,
    /// The spool and the config file.
    _dir: tempfile::TempDir,
}

impl Relay {
    async fn stop(self) {
        self.handle.shutdown().await;
    }
}

/// The relay with these `[[upstream]]` tables; breaker opens after 2 failures for 1s.
async fn relay(upstreams: &[String]) -> Relay {
    let toml = format!(
        r#"
[server]
shutdown_grace = "1s"

[delivery]
mode = "passthrough"
breaker_threshold = 2
breaker_cooldown = "1s"

{}
"#,
        upstreams.join("\n")
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = TestConfig::new(dir.path()).toml(&toml).load();
    let handle = smarthost::start(Arc::new(config))
        .await
        .expect("relay starts");
    let addr = handle.local_addrs()[0];
    Relay {
        handle,
        addr,
        _dir: dir,
    }
}

fn ca_file(ca: &TestCa) -> String {
    format!("ca_file = {:?}\n", ca.ca_file().display().to_string())
}

/// A plaintext upstream tried after the ones with priority 0.
fn backup_upstream(fake: &FakeUpstream) -> String {
    upstream(
        "backup",
        &format!("smtp://localhost:{}?tls=none", fake.port()),
        "priority = 10",
    )
}

async fn plain_fake() -> FakeUpstream {
    FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .ext("8BITMIME")
        .start()
        .await
}

/// Submit a message from app@example.com and return the relay's reply to it, whether
/// it accepted the message or not.
async fn submit(relay: &Relay, to: &[&str]) -> Response {
    let request = SendRequest {
        server: relay.addr.to_string(),
        from: "app@example.com".into(),
        to: to.iter().map(|t| t.to_string()).collect(),
        subject: "Hello".into(),
        body: "Hi there.\n.a line that starts with a dot\n".into(),
        raw: None,
        helo: "app.test".into(),
        timeout: Duration::from_secs(20),
    };
    let response = match send(&request).await {
        Ok(response) => response,
        Err(SendError::Smtp(ClientError::Refused { response, .. })) => response,
        Err(e) => panic!("submission failed: {e}"),
    };
    for line in &response.lines {
        // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with code and CRLF.
        assert!(line.len() + 6 <= 512, "reply line too long: {line}");
    }
    response
}

const RCPT: &str = "user@example.net";

fn assert_delivered(response: &Response) {
    assert_eq!(response.code, 250, "{response}");
    assert!(
        response.text().starts_with("2.0.0 queued as "),
        "{response}"
    );
}

#[tokio::test]
async fn implicit_tls_carries_the_whole_conversation() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .ext("SIZE 10000000")
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());
    let relay = relay(&[upstream("tls", &url, &ca_file(&ca))]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    let messages = fake.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(m.tls);
    assert!(
        m.mail_from.starts_with("<app@example.com> SIZE="),
        "{}",
        m.mail_from
    );
    assert_eq!(m.rcpts, [RCPT]);
    let text = m.text();
    assert!(text.contains("\r\nSubject: Hello\r\n"), "{text}");
    assert!(
        text.contains("\r\n.a line that starts with a dot\r\n"),
        "{text}"
    );
    assert!(text.starts_with("Received: "), "{text}");
    assert!(fake.lines().iter().all(|l| l.tls));
    relay.stop().await;
}

#[tokio::test]
async fn starttls_upgrades_and_says_ehlo_again() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::StartTls)
        .cert(&ca.leaf("localhost"))
        .auth(&["PLAIN", "LOGIN"])
        .account("relay@example.com", "s3cret")
        .start()
        .await;
    let url = format!("smtp://localhost:{}", fake.port());
    let creds = "username = \"relay@example.com\"\npassword = \"s3cret\"\n";
    let relay = relay(&[upstream("sub", &url, &(ca_file(&ca) + creds))]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    let lines = fake.lines();
    let clear: Vec<&str> = lines
        .iter()
        .filter(|l| !l.tls)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(clear, [format!("EHLO {HOSTNAME}").as_str(), "STARTTLS"]);
    let secured: Vec<String> = lines
        .iter()
        .filter(|l| l.tls)
        .map(|l| l.text.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(secured[..3], ["EHLO", "AUTH", "MAIL"]);
    let m = &fake.messages()[0];
    assert!(m.tls);
    assert_eq!(m.user.as_deref(), Some("relay@example.com"));
    relay.stop().await;
}

#[tokio::test]
async fn auto_detects_implicit_tls() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .start()
        .await;
    let url = format!("smtp://localhost:{}?tls=auto", fake.port());
    // The detection waits for a greeting as long as the timeout (at most 3 s).
    let extra = ca_file(&ca) + "timeout = \"1s\"";
    let relay = relay(&[upstream("auto", &url, &extra)]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert!(fake.messages()[0].tls);
    assert!(fake.lines().iter().all(|l| l.tls));
    relay.stop().await;
}

#[tokio::test]
async fn auto_detects_starttls() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::StartTls)
        .cert(&ca.leaf("localhost"))
        .start()
        .await;
    let url = format!("smtp://localhost:{}?tls=auto", fake.port());
    let relay = relay(&[upstream("auto", &url, &ca_file(&ca))]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert!(fake.messages()[0].tls);
    let clear: Vec<String> = fake
        .lines()
        .into_iter()
        .filter(|l| !l.tls)
        .map(|l| l.text)
        .collect();
    assert_eq!(clear, [format!("EHLO {HOSTNAME}").as_str(), "STARTTLS"]);
    relay.stop().await;
}

#[tokio::test]
async fn required_starttls_missing_sends_nothing_in_the_clear() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .auth(&["PLAIN", "LOGIN"])
        .account("relay@example.com", "s3cret")
        .start()
        .await;
    let url = format!("smtp://localhost:{}", fake.port());
    let creds = "username = \"relay@example.com\"\npassword = \"s3cret\"\n";
    let relay = relay(&[upstream("nostarttls", &url, creds)]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(response.code, 451, "{response}");
    let text = response.text();
    assert!(text.starts_with("4.4.1 "), "{text}");
    assert!(
        text.contains("Not delivered now, please try again later"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    // Only the EHLO that found STARTTLS missing: no AUTH, no envelope, no content.
    assert_eq!(fake.verbs(), ["EHLO"]);
    assert!(fake.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_refused_and_accepted_with_ca_file() {
    let private_ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&private_ca.leaf("localhost"))
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());

    let untrusting = relay(&[upstream("private", &url, "")]).await;
    let response = submit(&untrusting, &[RCPT]).await;
    assert_eq!(response.code, 451, "{response}");
    let text = response.text();
    assert!(text.starts_with("4.4.1 "), "{text}");
    assert!(
        text.contains("Not delivered now, please try again later"),
        "{text}"
    );
    assert!(
        !text.contains("ca_file"),
        "the diagnosis stays in the log: {text}"
    );
    assert!(
        fake.lines().is_empty(),
        "nothing may follow a refused handshake"
    );
    untrusting.stop().await;

    let trusting = relay(&[upstream("private", &url, &ca_file(&private_ca))]).await;
    assert_delivered(&submit(&trusting, &[RCPT]).await);
    assert_eq!(fake.messages().len(), 1);
    trusting.stop().await;
}

async fn authenticates_with(offered: &[&str], expected_line: &str) {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .auth(offered)
        .account("relay@example.com", "s3cret")
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());
    let creds = "username = \"relay@example.com\"\npassword = \"s3cret\"\n";
    let relay = relay(&[upstream("auth", &url, &(ca_file(&ca) + creds))]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    let lines: Vec<String> = fake.lines().into_iter().map(|l| l.text).collect();
    assert!(lines.iter().any(|l| l == expected_line), "{lines:?}");
    assert_eq!(
        fake.messages()[0].user.as_deref(),
        Some("relay@example.com")
    );
    relay.stop().await;
}

#[tokio::test]
async fn auth_plain() {
    // base64("\0relay@example.com\0s3cret")
    authenticates_with(
        &["LOGIN", "PLAIN"],
        "AUTH PLAIN AHJlbGF5QGV4YW1wbGUuY29tAHMzY3JldA==",
    )
    .await;
}

#[tokio::test]
async fn auth_login() {
    authenticates_with(&["LOGIN"], "AUTH LOGIN").await;
}

#[tokio::test]
async fn bad_credentials_535_defer_the_message_and_send_no_envelope() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .auth(&["PLAIN"])
        .account("relay@example.com", "right")
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());
    let creds = "username = \"relay@example.com\"\npassword = \"wrong-pw\"\n";
    let relay = relay(&[upstream("auth", &url, &(ca_file(&ca) + creds))]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(response.code, 451, "{response}");
    let text = response.text();
    assert!(text.starts_with("4.4.1 "), "{text}");
    assert!(
        !text.contains("535"),
        "the diagnosis stays in the log: {text}"
    );
    assert!(!text.contains("wrong-pw"), "{text}");
    assert_eq!(fake.verbs(), ["EHLO", "AUTH"]);
    assert!(fake.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn fails_over_when_the_connection_is_refused() {
    let backup = plain_fake().await;
    let dead = format!("smtp://127.0.0.1:{}?tls=none", free_port());
    let relay = relay(&[upstream("dead", &dead, ""), backup_upstream(&backup)]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert_eq!(backup.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn fails_over_on_421_at_greeting_and_at_mail() {
    let busy = FakeUpstream::builder(Mode::Plain)
        .greeting(Greeting::Reply("421 4.3.2 too busy".into()))
        .start()
        .await;
    let closing = FakeUpstream::builder(Mode::Plain)
        .reply(Verb::Mail, "421 4.7.0 try again later, closing connection")
        .start()
        .await;
    let backup = plain_fake().await;
    let relay = relay(&[
        upstream(
            "busy",
            &format!("smtp://localhost:{}?tls=none", busy.port()),
            "priority = 0",
        ),
        upstream(
            "closing",
            &format!("smtp://localhost:{}?tls=none", closing.port()),
            "priority = 1",
        ),
        backup_upstream(&backup),
    ])
    .await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert_eq!(busy.connections(), 1);
    assert!(busy.lines().is_empty());
    assert_eq!(closing.verbs(), ["EHLO", "MAIL"]);
    assert!(closing.messages().is_empty());
    assert_eq!(backup.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn fails_over_on_451_at_mail_and_after_the_content() {
    let at_mail = FakeUpstream::builder(Mode::Plain)
        .reply(Verb::Mail, "451 4.3.0 temporary local problem")
        .start()
        .await;
    let at_end = FakeUpstream::builder(Mode::Plain)
        .reply(Verb::EndOfData, "451 4.3.0 queue file write error")
        .start()
        .await;
    let backup = plain_fake().await;
    let relay = relay(&[
        upstream(
            "at-mail",
            &format!("smtp://localhost:{}?tls=none", at_mail.port()),
            "priority = 0",
        ),
        upstream(
            "at-end",
            &format!("smtp://localhost:{}?tls=none", at_end.port()),
            "priority = 1",
        ),
        backup_upstream(&backup),
    ])
    .await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert_eq!(at_mail.verbs(), ["EHLO", "MAIL", "RSET"]);
    assert_eq!(at_end.verbs(), ["EHLO", "MAIL", "RCPT", "DATA"]);
    assert!(at_mail.messages().is_empty() && at_end.messages().is_empty());
    assert_eq!(backup.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn fails_over_when_tls_fails() {
    let untrusted = FakeUpstream::builder(Mode::Implicit)
        .cert(&pki::self_signed("localhost"))
        .start()
        .await;
    let backup = plain_fake().await;
    let url = format!("smtps://localhost:{}", untrusted.port());
    let relay = relay(&[upstream("untrusted", &url, ""), backup_upstream(&backup)]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert_eq!(untrusted.connections(), 1);
    assert!(untrusted.lines().is_empty());
    assert_eq!(backup.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn permanent_refusal_is_relayed_and_no_other_upstream_is_tried() {
    let rejecting = FakeUpstream::builder(Mode::Plain)
        .rcpt_reply_for(
            RCPT,
            "550 5.1.1 <user@example.net>: Recipient address rejected",
        )
        .start()
        .await;
    let backup = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", rejecting.port());
    let relay = relay(&[upstream("primary", &url, ""), backup_upstream(&backup)]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(
        response.to_string(),
        "550 5.1.1 upstream primary said: <user@example.net>: Recipient address rejected"
    );
    assert_eq!(backup.connections(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn permanent_refusal_of_the_content_is_relayed() {
    let rejecting = FakeUpstream::builder(Mode::Plain)
        .reply(Verb::EndOfData, "554 5.7.1 Message rejected as spam")
        .start()
        .await;
    let backup = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", rejecting.port());
    let relay = relay(&[upstream("primary", &url, ""), backup_upstream(&backup)]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(
        response.to_string(),
        "554 5.7.1 upstream primary said: Message rejected as spam"
    );
    assert_eq!(backup.connections(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn transient_reply_is_relayed_with_its_codes() {
    let full = FakeUpstream::builder(Mode::Plain)
        .reply(Verb::EndOfData, "452 4.3.1 Insufficient system storage")
        .start()
        .await;
    let url = format!("smtp://localhost:{}?tls=none", full.port());
    let relay = relay(&[upstream("primary", &url, "")]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(
        response.to_string(),
        "452 4.3.1 upstream primary said: Insufficient system storage"
    );
    relay.stop().await;
}

#[tokio::test]
async fn multi_line_refusal_is_relayed_readably() {
    let rejecting = FakeUpstream::builder(Mode::Plain)
        .reply(
            Verb::EndOfData,
            "550-5.7.1 [192.0.2.1] Our system has detected that this message is\r\n\
             550-5.7.1 likely unsolicited mail.\r\n\
             550 5.7.1 https://support.example/?p=spam",
        )
        .start()
        .await;
    let url = format!("smtp://localhost:{}?tls=none", rejecting.port());
    let relay = relay(&[upstream("primary", &url, "")]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(
        response.to_string(),
        "550 5.7.1 upstream primary said: [192.0.2.1] Our system has detected that this message is likely unsolicited mail. https://support.example/?p=spam"
    );
    relay.stop().await;
}

#[tokio::test]
async fn nothing_reachable_is_a_temporary_failure() {
    let dead = format!("smtp://127.0.0.1:{}?tls=none", free_port());
    let relay = relay(&[upstream("dead", &dead, "")]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(response.code, 451, "{response}");
    let text = response.text();
    assert!(
        text == "4.4.1 Not delivered now, please try again later",
        "{text}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn circuit_breaker_opens_and_recovers_by_itself() {
    let flaky = FakeUpstream::builder(Mode::Plain).start().await;
    flaky.set_healthy(false);
    let backup = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", flaky.port());
    let relay = relay(&[upstream("flaky", &url, ""), backup_upstream(&backup)]).await;

    // Two failures (threshold 2) open the breaker for 1 s.
    for expected in [1, 2] {
        assert_delivered(&submit(&relay, &[RCPT]).await);
        assert_eq!(flaky.connections(), expected);
    }
    // Open: skipped without a connection.
    assert_delivered(&submit(&relay, &[RCPT]).await);
    assert_eq!(flaky.connections(), 2);
    assert_eq!(backup.messages().len(), 3);

    // After the cool-down one probe goes through; it fails, the cool-down doubles.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_delivered(&submit(&relay, &[RCPT]).await);
    assert_eq!(flaky.connections(), 3);
    assert_delivered(&submit(&relay, &[RCPT]).await);
    assert_eq!(flaky.connections(), 3);

    // Healthy again: after the (now 2 s) cool-down the probe succeeds and the
    // upstream is back for good, nobody had to re-enable it.
    flaky.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_delivered(&submit(&relay, &[RCPT]).await);
    assert_delivered(&submit(&relay, &[RCPT]).await);
    assert_eq!(flaky.messages().len(), 2);
    assert_eq!(flaky.connections(), 4, "the probe's connection is reused");
    assert_eq!(backup.messages().len(), 5);
    relay.stop().await;
}

#[tokio::test]
async fn messages_share_one_connection_with_rset_between() {
    let fake = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", fake.port());
    let relay = relay(&[upstream("pooled", &url, "")]).await;

    for _ in 0..5 {
        assert_delivered(&submit(&relay, &[RCPT]).await);
    }

    assert_eq!(fake.connections(), 1);
    let messages = fake.messages();
    assert_eq!(messages.len(), 5);
    assert!(messages.iter().all(|m| m.conn == 1));
    assert_eq!(fake.verbs().iter().filter(|v| *v == "RSET").count(), 4);
    assert_eq!(fake.verbs().iter().filter(|v| *v == "EHLO").count(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn max_messages_per_connection_opens_a_new_connection() {
    let fake = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", fake.port());
    let relay = relay(&[upstream("pooled", &url, "max_messages_per_connection = 2")]).await;

    for _ in 0..5 {
        assert_delivered(&submit(&relay, &[RCPT]).await);
    }

    let conns: Vec<usize> = fake.messages().iter().map(|m| m.conn).collect();
    assert_eq!(conns, [1, 1, 2, 2, 3]);
    relay.stop().await;
}

/// The reads that carried the MAIL and RCPT lines of the first transaction.
fn envelope_reads(fake: &FakeUpstream) -> Vec<usize> {
    fake.lines()
        .iter()
        .filter(|l| l.text.starts_with("MAIL ") || l.text.starts_with("RCPT "))
        .map(|l| l.read)
        .collect()
}

#[tokio::test]
async fn pipelining_sends_the_envelope_in_one_write() {
    let fake = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", fake.port());
    let relay = relay(&[upstream("pipe", &url, "")]).await;

    assert_delivered(&submit(&relay, &[RCPT, "other@example.net"]).await);

    let reads = envelope_reads(&fake);
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().all(|r| *r == reads[0]), "{reads:?}");
    assert_eq!(fake.messages()[0].rcpts, [RCPT, "other@example.net"]);
    relay.stop().await;
}

#[tokio::test]
async fn without_pipelining_each_command_waits_for_its_reply() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let url = format!("smtp://localhost:{}?tls=none", fake.port());
    let relay = relay(&[upstream("lockstep", &url, "")]).await;

    assert_delivered(&submit(&relay, &[RCPT, "other@example.net"]).await);

    let reads = envelope_reads(&fake);
    assert_eq!(reads.len(), 3);
    assert!(reads[0] < reads[1] && reads[1] < reads[2], "{reads:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .hang_up_after_message()
        .start()
        .await;
    let url = format!("smtp://localhost:{}?tls=none", fake.port());
    let relay = relay(&[upstream("hangs-up", &url, "")]).await;

    for _ in 0..2 {
        assert_delivered(&submit(&relay, &[RCPT]).await);
    }

    let conns: Vec<usize> = fake.messages().iter().map(|m| m.conn).collect();
    assert_eq!(conns, [1, 2]);
    relay.stop().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_goes_to_an_upstream_that_takes_it() {
    let small = FakeUpstream::builder(Mode::Plain)
        .ext("SIZE 100")
        .start()
        .await;
    let backup = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", small.port());
    let relay = relay(&[upstream("small", &url, ""), backup_upstream(&backup)]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert_eq!(small.verbs(), ["EHLO"]);
    assert_eq!(backup.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn fails_over_when_starttls_is_refused() {
    let ca = TestCa::generate();
    let refusing = FakeUpstream::builder(Mode::StartTls)
        .cert(&ca.leaf("localhost"))
        .reply(Verb::StartTls, "554 5.7.3 TLS not available")
        .start()
        .await;
    let backup = plain_fake().await;
    let url = format!("smtp://localhost:{}", refusing.port());
    let relay = relay(&[
        upstream("refusing", &url, &ca_file(&ca)),
        backup_upstream(&backup),
    ])
    .await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert_eq!(refusing.verbs(), ["EHLO", "STARTTLS"]);
    assert_eq!(backup.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn fails_over_when_ehlo_and_helo_are_refused() {
    let refusing = FakeUpstream::builder(Mode::Plain)
        .reply(
            Verb::Ehlo,
            "550 5.7.1 Client host rejected: cannot find your hostname",
        )
        .reply(
            Verb::Helo,
            "550 5.7.1 Client host rejected: cannot find your hostname",
        )
        .start()
        .await;
    let backup = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", refusing.port());
    let relay = relay(&[upstream("refusing", &url, ""), backup_upstream(&backup)]).await;

    assert_delivered(&submit(&relay, &[RCPT]).await);

    assert_eq!(backup.messages().len(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn an_upstream_421_reaches_the_client_as_451() {
    let closing = FakeUpstream::builder(Mode::Plain)
        .reply(
            Verb::EndOfData,
            "421 4.7.0 Try again later, closing connection",
        )
        .start()
        .await;
    let url = format!("smtp://localhost:{}?tls=none", closing.port());
    let relay = relay(&[upstream("closing", &url, "")]).await;

    // 421 would tell the client that the relay is closing the connection; it is not.
    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(
        response.to_string(),
        "451 4.7.0 upstream closing said: Try again later, closing connection"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_421_to_a_pipelined_mail_is_relayed() {
    let closing = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .reply(Verb::Mail, "421 4.7.0 Too many connections, closing")
        .start()
        .await;
    let url = format!("smtp://localhost:{}?tls=none", closing.port());
    let relay = relay(&[upstream("closing", &url, "")]).await;

    let response = submit(&relay, &[RCPT]).await;

    assert_eq!(
        response.to_string(),
        "451 4.7.0 upstream closing said: Too many connections, closing"
    );
    relay.stop().await;
}

#[tokio::test]
async fn concurrent_messages_respect_max_connections() {
    let fake = plain_fake().await;
    let url = format!("smtp://localhost:{}?tls=none", fake.port());
    let relay = relay(&[upstream("narrow", &url, "max_connections = 1")]).await;

    let (a, b, c) = tokio::join!(
        submit(&relay, &[RCPT]),
        submit(&relay, &[RCPT]),
        submit(&relay, &[RCPT])
    );

    for response in [a, b, c] {
        assert_delivered(&response);
    }
    assert_eq!(fake.connections(), 1);
    assert_eq!(fake.messages().len(), 3);
    relay.stop().await;
}
