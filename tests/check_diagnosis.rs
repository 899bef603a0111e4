//! `smarthost check` against scripted fake upstreams: one test per diagnosis, asserting
//! the FAIL line and the `fix:` text an operator reads, and that secrets never appear.

pub mod fake_upstream;
pub mod support;

use std::time::Duration;

use fake_upstream::pki::{self, TestCa};
use fake_upstream::{FakeUpstream, Greeting, Mode};
use smarthost::ops::check::{CheckReport, check_upstreams};
use support::{HOSTNAME, config, free_port};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Run `check` on a configuration with these `[[upstream]]` tables.
async fn check(upstreams: &[String], send_to: Option<&str>) -> CheckReport {
    check_upstreams(&config::parsed(&upstreams.join("\n")), send_to).await
}

/// One `[[upstream]]` table named "up"; `extra` is more TOML lines.
fn upstream(url: &str, extra: &str) -> String {
    config::upstream("up", url, &format!("timeout = \"1s\"\n{extra}"))
}

fn ca_file(ca: &TestCa) -> String {
    format!("ca_file = {:?}\n", ca.ca_file().display().to_string())
}

const CREDS: &str = "username = \"relay@example.com\"\npassword = \"Sup3r-S3cret!pw\"\n";

/// The report failed at `step` with a detail containing `detail`, followed by a fix
/// containing `fix`.
fn assert_diagnosis(report: &CheckReport, step: &str, detail: &str, fix: &str) {
    let text = &report.text;
    assert!(!report.all_ok, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("FAIL"))
        .unwrap_or_else(|| panic!("no FAIL line:\n{text}"));
    let fail = lines[at].trim_start();
    assert!(
        fail.starts_with(&format!("FAIL  {step:<9} ")),
        "failed at the wrong step:\n{text}"
    );
    assert!(fail.contains(detail), "detail {detail:?} missing:\n{text}");
    let fix_line = lines
        .get(at + 1)
        .map(|l| l.trim_start())
        .filter(|l| l.starts_with("fix: "))
        .unwrap_or_else(|| panic!("no fix after the FAIL line:\n{text}"));
    assert!(fix_line.contains(fix), "fix {fix:?} missing:\n{text}");
}

#[tokio::test]
async fn connection_refused() {
    let port = free_port();
    let report = check(&[upstream(&format!("smtp://127.0.0.1:{port}"), "")], None).await;
    assert_diagnosis(
        &report,
        "connect",
        &format!("cannot connect to 127.0.0.1:{port}"),
        &format!(
            "nothing listens on 127.0.0.1:{port}: check the port (465 for smtps://, 587 for smtp://)"
        ),
    );
}

/// A listener whose accept queue is full, so that a new connection attempt gets no
/// answer at all, as behind a firewall that drops packets.
async fn unanswering_listener() -> (TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => return (listener, queued),
        }
    }
    panic!("the accept queue never filled up");
}

#[tokio::test]
async fn connect_timeout() {
    let (listener, _queued) = unanswering_listener().await;
    let port = listener.local_addr().unwrap().port();
    let report = check(&[upstream(&format!("smtp://127.0.0.1:{port}"), "")], None).await;
    assert_diagnosis(
        &report,
        "connect",
        "TCP connect: no answer within 1s",
        &format!("no answer from 127.0.0.1:{port}: a firewall may drop outbound port {port}"),
    );
}

#[tokio::test]
async fn stalled_server_times_out() {
    let ca = TestCa::generate();
    let stalled = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .greeting(Greeting::Silent)
        .start()
        .await;
    let url = format!("smtps://localhost:{}", stalled.port());
    let report = check(&[upstream(&url, &ca_file(&ca))], None).await;
    assert_diagnosis(
        &report,
        "greeting",
        "greeting: no answer within 1s",
        "the server is too slow or stalled; try again, or raise the upstream's timeout",
    );
}

#[tokio::test]
async fn implicit_tls_port_spoken_to_in_plaintext() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .start()
        .await;
    let port = fake.port();
    let url = format!("smtp://localhost:{port}");
    let report = check(&[upstream(&url, &ca_file(&ca))], None).await;
    assert_diagnosis(
        &report,
        "greeting",
        "greeting: no answer within 1s",
        &format!(
            "the server sent no greeting: it probably expects TLS from the first byte (implicit TLS); use smtps://localhost:{port}"
        ),
    );
}

#[tokio::test]
async fn plaintext_port_spoken_to_with_tls() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let port = fake.port();
    let report = check(&[upstream(&format!("smtps://localhost:{port}"), "")], None).await;
    assert_diagnosis(
        &report,
        "tls",
        "TLS handshake failed",
        &format!(
            "the server answered in plaintext: port {port} speaks SMTP first and upgrades with STARTTLS; use smtp://localhost:{port}"
        ),
    );
}

#[tokio::test]
async fn certificate_for_another_name() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("mail.other.example"))
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());
    let report = check(&[upstream(&url, &ca_file(&ca))], None).await;
    assert_diagnosis(
        &report,
        "tls",
        "TLS handshake failed: invalid peer certificate",
        "the server's certificate is not valid for \"localhost\": use the host name the provider documents",
    );
}

#[tokio::test]
async fn certificate_from_an_unknown_ca() {
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&pki::self_signed("localhost"))
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());
    let report = check(&[upstream(&url, "")], None).await;
    assert_diagnosis(
        &report,
        "tls",
        "TLS handshake failed: invalid peer certificate",
        "the certificate is signed by a CA this relay does not trust: set ca_file to the CA certificate (PEM)",
    );
}

#[tokio::test]
async fn expired_certificate() {
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.expired_leaf("localhost"))
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());
    let report = check(&[upstream(&url, &ca_file(&ca))], None).await;
    assert_diagnosis(
        &report,
        "tls",
        "TLS handshake failed: invalid peer certificate",
        "the server's certificate has expired (or the clock of this machine is wrong)",
    );
}

#[tokio::test]
async fn starttls_not_offered() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let port = fake.port();
    let report = check(
        &[upstream(&format!("smtp://localhost:{port}"), CREDS)],
        None,
    )
    .await;
    assert_diagnosis(
        &report,
        "starttls",
        "STARTTLS is required but the server does not offer it",
        &format!(
            "the server does not offer STARTTLS on port {port}: use smtps://localhost:465 if it offers implicit TLS"
        ),
    );
    assert_eq!(fake.verbs(), ["EHLO"], "nothing after EHLO in the clear");
}

async fn tls_fake(ca: &TestCa, auth: &[&str]) -> FakeUpstream {
    FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .auth(auth)
        .account("relay@example.com", "Sup3r-S3cret!pw")
        .start()
        .await
}

#[tokio::test]
async fn no_common_auth_mechanism() {
    let ca = TestCa::generate();
    let fake = tls_fake(&ca, &["CRAM-MD5", "GSSAPI"]).await;
    let url = format!("smtps://localhost:{}", fake.port());
    let report = check(&[upstream(&url, &(ca_file(&ca) + CREDS))], None).await;
    assert_diagnosis(
        &report,
        "auth",
        "no common AUTH mechanism (server offers: CRAM-MD5 GSSAPI)",
        "the server offers no mechanism smarthost speaks (PLAIN, LOGIN, XOAUTH2)",
    );
}

#[tokio::test]
async fn no_auth_offered_at_all() {
    let ca = TestCa::generate();
    let fake = tls_fake(&ca, &[]).await;
    let url = format!("smtps://localhost:{}", fake.port());
    let report = check(&[upstream(&url, &(ca_file(&ca) + CREDS))], None).await;
    assert_diagnosis(
        &report,
        "auth",
        "no common AUTH mechanism (server offers: none)",
        "the server offers no AUTH: remove username/password",
    );
}

#[tokio::test]
async fn bad_credentials() {
    let ca = TestCa::generate();
    let fake = tls_fake(&ca, &["PLAIN", "LOGIN"]).await;
    let url = format!("smtps://localhost:{}", fake.port());
    let wrong = "username = \"relay@example.com\"\npassword = \"not-the-password\"\n";
    let report = check(&[upstream(&url, &(ca_file(&ca) + wrong))], None).await;
    assert_diagnosis(
        &report,
        "auth",
        "authentication failed: 535 5.7.8",
        "the username or password is wrong, or the account needs an app password",
    );
}

#[tokio::test]
async fn provider_requires_from_to_be_the_account() {
    // SendGrid style: the login is not an address, mail must come from a verified one.
    let ca = TestCa::generate();
    let fake = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .auth(&["PLAIN", "LOGIN"])
        .account("apikey", "Sup3r-S3cret!pw")
        .only_sender(
            "relay@example.com",
            "550 The from address does not match a verified Sender Identity",
        )
        .start()
        .await;
    let url = format!("smtps://localhost:{}", fake.port());
    let creds = "username = \"apikey\"\npassword = \"Sup3r-S3cret!pw\"\n";
    let report = check(
        &[upstream(&url, &(ca_file(&ca) + creds))],
        Some("ops@example.net"),
    )
    .await;
    assert_diagnosis(
        &report,
        "send",
        &format!(
            "test message from <postmaster@{HOSTNAME}> to <ops@example.net>: 550 The from address does not match"
        ),
        "the provider requires the From address to be the account: set sender = \"<account address>\" on this upstream",
    );

    // With the suggested fix, the test message goes through.
    let fixed = format!("{creds}sender = \"relay@example.com\"\n");
    let report = check(
        &[upstream(&url, &(ca_file(&ca) + &fixed))],
        Some("ops@example.net"),
    )
    .await;
    assert!(report.all_ok, "{}", report.text);
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn a_passing_check_lists_every_step() {
    let ca = TestCa::generate();
    let fake = tls_fake(&ca, &["PLAIN"]).await;
    let url = format!("smtps://localhost:{}", fake.port());
    let report = check(
        &[upstream(&url, &(ca_file(&ca) + CREDS))],
        Some("ops@example.net"),
    )
    .await;
    assert!(report.all_ok, "{}", report.text);
    let steps: Vec<&str> = report
        .text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        steps,
        ["dns", "connect", "tls", "greeting", "ehlo", "auth", "send"],
        "{}",
        report.text
    );
    assert!(!report.text.contains("FAIL"));
}

#[tokio::test]
async fn secrets_never_appear_in_the_output() {
    const SECRET: &str = "Sup3r-S3cret!pw";
    let ca = TestCa::generate();
    let accepting = tls_fake(&ca, &["PLAIN"]).await;
    let login_only = tls_fake(&ca, &["LOGIN"]).await;
    let refusing = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .auth(&["PLAIN", "LOGIN"])
        .account("relay@example.com", "something else")
        .start()
        .await;
    let plain = FakeUpstream::builder(Mode::Plain)
        .auth(&["PLAIN"])
        .start()
        .await;
    let port = free_port();
    let named =
        |name: &str, table: String| table.replace("name = \"up\"", &format!("name = \"{name}\""));
    let upstreams = [
        named(
            "ok",
            upstream(
                &format!("smtps://localhost:{}", accepting.port()),
                &(ca_file(&ca) + CREDS),
            ),
        ),
        named(
            "login",
            upstream(
                &format!("smtps://localhost:{}", login_only.port()),
                &(ca_file(&ca) + CREDS),
            ),
        ),
        named(
            "refused",
            upstream(
                &format!("smtps://localhost:{}", refusing.port()),
                &(ca_file(&ca) + CREDS),
            ),
        ),
        // The password in the URL, and no TLS to protect it.
        named(
            "in-url",
            upstream(
                &format!(
                    "smtp://relay%40example.com:{SECRET}@localhost:{}",
                    plain.port()
                ),
                "",
            ),
        ),
        named(
            "down",
            upstream(&format!("smtps://localhost:{port}?tls=implicit"), CREDS),
        ),
    ];
    let report = check(&upstreams, Some("ops@example.net")).await;

    let text = &report.text;
    assert_eq!(text.matches("upstream ").count(), 5, "{text}");
    assert!(text.contains("ok    auth      PLAIN accepted"), "{text}");
    assert!(text.contains("ok    auth      LOGIN accepted"), "{text}");
    assert!(text.contains("authentication failed: 535"), "{text}");
    assert!(
        text.contains("upstream in-url (smtp://relay%40example.com@localhost:"),
        "{text}"
    );
    use base64::prelude::{BASE64_STANDARD, Engine as _};
    for needle in [
        SECRET.to_owned(),
        BASE64_STANDARD.encode(SECRET),
        BASE64_STANDARD.encode(format!("\0relay@example.com\0{SECRET}")),
    ] {
        assert!(!text.contains(&needle), "{needle:?} printed:\n{text}");
    }
}
